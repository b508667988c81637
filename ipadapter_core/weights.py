"""Reading and writing IP-Adapter weight files in the official layout.

``.bin``/``.pt``/``.pth``: ``torch.save({"image_proj": {...}, "ip_adapter": {...}})``, read with
``weights_only=True`` (no pickled code runs). ``.safetensors``: the same tensors with the prefixes ``image_proj.`` and
``ip_adapter.``; files this extension writes also carry the spec as JSON under the metadata key ``ipadapter_spec``.
Saved image prompts (IMAGE_PROMPT) are safetensors files too.
"""
import os
import tempfile
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from .checks import finite_tensors
from .dit import build_dit_adapter, detect_dit_spec, is_dit_layout
from .errors import AdapterFileError
from .image_prompt import PROMPT_FORMAT, ImagePrompt, prompt_from_tensors, prompt_tensors
from .spec import AdapterSpec, detect_spec

PARTS = ("image_proj", "ip_adapter")
SPEC_METADATA_KEY = "ipadapter_spec"


def nest(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj.x": t, "ip_adapter.1.y": t}`` -> ``{"image_proj": {"x": t}, "ip_adapter": {"1.y": t}}``."""
    nested: dict[str, dict[str, torch.Tensor]] = {part: {} for part in PARTS}
    stray = []
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        if part in nested and rest:
            nested[part][rest] = value
        else:
            stray.append(key)
    if stray or not all(nested.values()):
        raise AdapterFileError(
            f"not an IP-Adapter file: expected only keys under 'image_proj.' and 'ip_adapter.', found "
            f"{sorted(stray)[:5] or sorted(k for k, v in nested.items() if not v)}. Is this a checkpoint, LoRA "
            "or CLIP vision file? IP-Adapter files come from h94/IP-Adapter or this extension's trainer.")
    return nested


def flatten(nested: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{part}.{key}": value for part in PARTS for key, value in nested[part].items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(f"cannot read '{path.name}' ({exc}): the file is truncated or corrupt; "
                               "download it again") from exc


def _read_pickle(path: Path) -> dict:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        raise AdapterFileError(
            f"cannot read '{path.name}' as a weights-only torch file ({type(exc).__name__}: {str(exc)[:200]}): "
            "it is truncated, corrupt or holds code instead of tensors; download it again, preferably as "
            ".safetensors") from exc
    if not isinstance(data, dict):
        raise AdapterFileError(f"'{path.name}' holds a {type(data).__name__}, not a dict of tensors: "
                               "not an IP-Adapter file")
    return data


def read_adapter_file(path) -> dict[str, dict[str, torch.Tensor]]:
    """Read a weight file into the nested official layout. Raises AdapterFileError with the fix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return nest(_read_safetensors(path))
    data = _read_pickle(path)
    if set(PARTS) <= set(data) and all(isinstance(data[p], dict) for p in PARTS):
        return {part: dict(data[part]) for part in PARTS}
    return nest(data)


def load_adapter_file(path, faceid_variant: str = "auto"
                      ) -> tuple[dict[str, dict[str, torch.Tensor]], AdapterSpec]:
    """Read and check a file: the state dict and its spec, or an error that names the problem and the fix.
    ``faceid_variant``: what a FaceID file's contents cannot say (faceid_format.py)."""
    state_dict = read_adapter_file(path)
    try:
        spec = detect_spec(state_dict, faceid_variant)
    except AdapterFileError as exc:
        raise type(exc)(f"'{Path(path).name}': {exc}") from exc
    finite_tensors(f"'{Path(path).name}'", ((f"{part}.{key}", value) for part in PARTS
                                            for key, value in state_dict[part].items()))
    return state_dict, spec


def is_dit_adapter_file(path) -> bool:
    """A safetensors file in one of the DiT IP-Adapter layouts (dit.py), told from its key names alone (no tensor
    is read); anything unreadable is left to ``load_adapter_file`` to report."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return is_dit_layout(_peek_pickle(path))
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            return is_dit_layout(dict.fromkeys(f.keys()))
    except (safetensors.SafetensorError, OSError, ValueError):
        return False


def _peek_pickle(path: Path) -> dict:
    """The flattened key names of a weights-only torch file, its tensors memory-mapped (not read); {} when it
    cannot be opened that way (an old format, a broken file: the h94 loader then reports it)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types here; the full read names the problem
        return {}
    if not isinstance(data, dict):
        return {}
    if set(PARTS) <= set(data) and all(isinstance(data[p], dict) for p in PARTS):
        return flatten(data)
    return data


def _read_dit(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    data = _read_pickle(path)
    if set(PARTS) <= set(data) and all(isinstance(data[p], dict) for p in PARTS):
        return flatten(data)
    return data


def load_dit_adapter_file(path, operations=None):
    """A DiT IP-Adapter file -> its module, checked (layout, shapes, finite values) and strictly loaded."""
    path = Path(path)
    flat = _read_dit(path)
    try:
        detect_dit_spec(flat)
    except AdapterFileError as exc:
        raise type(exc)(f"'{path.name}': {exc}") from exc
    finite_tensors(f"'{path.name}'", flat.items())
    return build_dit_adapter(flat) if operations is None else build_dit_adapter(flat, operations)


def save_adapter_file(path, nested: dict[str, dict[str, torch.Tensor]]) -> AdapterSpec:
    """Write the official layout atomically (temp file + rename), with the spec in the metadata.

    ``.safetensors`` is recommended; ``.bin`` writes the reference's torch.save layout."""
    path = Path(path)
    spec = detect_spec(nested)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in flatten(nested).items()}
    if path.suffix == ".safetensors":
        atomic_write(path, lambda tmp: safetensors.torch.save_file(
            tensors, tmp, metadata={SPEC_METADATA_KEY: spec.to_json()}))
    else:
        atomic_write(path, lambda tmp: torch.save(nest(tensors), tmp))
    return spec


def atomic_write(path, write) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``: readers see the old file
    or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_image_prompt(path, prompt: ImagePrompt) -> None:
    """An IMAGE_PROMPT as safetensors (features exactly as encoded), written atomically."""
    tensors = prompt_tensors(prompt)
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata={"format": PROMPT_FORMAT}))


def load_image_prompt(path) -> ImagePrompt:
    path = Path(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise AdapterFileError(f"cannot read the image prompt '{path.name}' ({exc}): the file is truncated or "
                               "corrupt; encode and save it again") from exc
    finite_tensors(f"the image prompt '{path.name}'", tensors.items(), fix="encode and save it again")
    return prompt_from_tensors(tensors, f"'{path.name}'")
