"""Checkpoints: a folder per step with accelerate's resumable state, our own state file and the adapter in the
official layout; written under a temporary name and renamed when complete, so a crash mid-write leaves the
previous checkpoints as they were. Old ones are rotated out."""
import json
import logging
import os
import re
import shutil
from pathlib import Path

from ..ipadapter_core import atomic_write, save_adapter_file

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def adapter_filename(name: str) -> str:
    return f"ip-adapter_{name}.safetensors"


def export_adapter(adapter, path) -> None:
    """The trainable adapter (unwrapped) -> an official-layout .safetensors with the spec in its metadata, written
    by the same function the loader's round-trip tests use (atomic)."""
    nested = {part: {k: v.detach().float() for k, v in tensors.items()}
              for part, tensors in adapter.nested_state_dict().items()}
    save_adapter_file(path, nested)


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, folder: Path) -> Path | None:
    """``latest`` -> the newest complete checkpoint (None when there is none yet); a path -> that checkpoint."""
    if not resume:
        return None
    if resume == "latest":
        found = checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"'{resume}' is not a complete checkpoint (no {STATE_FILE}); use a "
                                f"checkpoint-N folder or 'latest'")
    return path


def save_checkpoint(accelerator, adapter, folder: Path, step: int, state: dict, name: str, keep: int) -> Path:
    """Every process calls this (DeepSpeed writes per-process shards); the main process finishes the folder."""
    final = folder / f"checkpoint-{step:08d}"
    partial = folder / f".checkpoint-{step:08d}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        export_adapter(adapter, partial / adapter_filename(name))
        _write_json(partial / STATE_FILE, dict(state, step=step))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        _rotate(folder, keep)
        log.info("checkpoint %s written", final)
    accelerator.wait_for_everyone()
    return final


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True)))


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def _rotate(folder: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".checkpoint-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
