"""Pre-encoding: VAE latents, CLIP image features and text embeddings of every usable sample, written once to
sharded .safetensors files, so later epochs run only the UNet (and the adapter).

Layout of a cache folder: ``cache.json`` (what was encoded, and how), ``empty_text.safetensors`` (the empty
prompt's embedding, for text drops) and ``part-R-K.safetensors`` shards with ``latents`` (n, 4, h, w),
``features`` (n, E) or (n, P, W), ``context`` (n, T, C), optionally ``pooled`` (n, Cp), and ``index`` (n,).
"""
import json
import logging
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..ipadapter_core import atomic_write
from .data import Bad, DataError, read_record

log = logging.getLogger(__name__)
META = "cache.json"


def save_tensors(tensors: dict, path: Path) -> None:
    """A shard (or the empty-prompt file), written atomically: a reader sees all of it or nothing."""
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


@torch.no_grad()
def encode_samples(frozen, items: list[dict], feature: str, dtype: torch.dtype) -> dict:
    """Usable samples -> the tensors one training step reads (stored in ``dtype``)."""
    pixels = torch.stack([item["pixels"] for item in items])  # (B, 3, R, R)
    pooled_image, hidden = frozen.encode_image(pixels)
    context, pooled_text = frozen.encode_text([item["text"] for item in items])
    out = {"latents": frozen.encode_latents(pixels).float(), "context": context.to(dtype),
           "features": (pooled_image if feature == "pooled" else hidden).to(dtype)}
    if pooled_text is not None:
        out["pooled"] = pooled_text.to(dtype)
    return out


def build_cache(frozen, records, folder: Path, *, resolution: int, feature: str, rank: int = 0, world: int = 1,
                shard_size: int = 256, batch_size: int = 8, dtype=torch.float16) -> Counter:
    """Encode records rank, rank + world, ... into ``part-<rank>-K`` shards; returns the skip counts."""
    folder.mkdir(parents=True, exist_ok=True)
    skipped, pending, shard = Counter(), [], 0
    for index in range(rank, len(records), world):
        item = read_record(records[index], resolution)
        if isinstance(item, Bad):
            skipped[item.reason] += 1
            continue
        pending.append(dict(item, index=index))
        if len(pending) == shard_size:
            _write_shard(frozen, pending, folder / f"part-{rank:03d}-{shard:05d}.safetensors", feature, dtype,
                         batch_size)
            pending, shard = [], shard + 1
    if pending:
        _write_shard(frozen, pending, folder / f"part-{rank:03d}-{shard:05d}.safetensors", feature, dtype, batch_size)
    return skipped


def _write_shard(frozen, items, path: Path, feature: str, dtype, batch_size: int) -> None:
    parts = [encode_samples(frozen, items[i:i + batch_size], feature, dtype) for i in range(0, len(items), batch_size)]
    tensors = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    tensors["index"] = torch.tensor([item["index"] for item in items])
    save_tensors(tensors, path)
    log.info("cache shard %s: %d samples", path.name, len(items))


@torch.no_grad()
def finish_cache(frozen, folder: Path, meta: dict, skipped: Counter) -> None:
    """Main process, after every rank's shards: the empty prompt's embedding and cache.json (written last)."""
    context, pooled = frozen.encode_text([""])
    empty = {"context": context, "zero_image_hidden": frozen.zero_image_hidden.float()}
    if pooled is not None:
        empty["pooled"] = pooled
    save_tensors(empty, folder / "empty_text.safetensors")
    count = sum(_rows(p) for p in sorted(folder.glob("part-*.safetensors")))
    meta = dict(meta, skipped=dict(skipped), embed_width=frozen.embed_width, count=count)
    atomic_write(folder / META, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1, sort_keys=True)))


def _rows(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return f.get_slice("index").get_shape()[0]


def load_meta(folder: Path) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise DataError(f"'{folder}' is not a finished cache (no {META}): run the pre-encode pass "
                        "(python -m training.train --precache ...) to completion")
    return json.loads(path.read_text())


def cached_records(folder: Path) -> list[tuple[str, int]]:
    """(shard path, row) of every cached sample, in a fixed order."""
    records = [(str(p), row) for p in sorted(Path(folder).glob("part-*.safetensors")) for row in range(_rows(p))]
    if not records:
        raise DataError(f"the cache '{folder}' holds no samples")
    return records


_OPEN: dict = {}


def read_cached(record: tuple[str, int], resolution: int = 0) -> dict:
    """One cached sample (the same dict keys a training step reads)."""
    path, row = record
    handle = _OPEN.get(path)
    if handle is None:
        handle = _OPEN[path] = safe_open(path, "pt")
    return {key: handle.get_slice(key)[row:row + 1][0] for key in handle.keys() if key != "index"}


def empty_text(folder: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    with safe_open(str(Path(folder) / "empty_text.safetensors"), "pt") as f:
        return f.get_tensor("context"), (f.get_tensor("pooled") if "pooled" in f.keys() else None)


def zero_image_hidden(folder: Path) -> torch.Tensor:
    with safe_open(str(Path(folder) / "empty_text.safetensors"), "pt") as f:
        return f.get_tensor("zero_image_hidden")
