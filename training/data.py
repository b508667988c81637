"""Training data: image-text pairs from a folder, a JSONL/CSV table or WebDataset-style tar shards.

Images are resized on the short side and centre-cropped to the training resolution, as (3, R, R) floats in
[0, 1]. A sample that cannot be used (unreadable image, missing caption, a shard cut short) is skipped and counted
by reason; the caller logs the counts and stops with a clear error when nothing usable is left.
"""
import csv
import io
import json
import logging
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .recipe import epoch_permutation

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DataError(RuntimeError):
    """No usable training data: the message says what was found and what is expected."""


@dataclass(frozen=True)
class Record:
    image: str  # a path, or a member name inside a shard
    text: str | None  # None: the caption is missing


@dataclass(frozen=True)
class Bad:
    """A sample that was skipped, and why."""
    reason: str


def load_image(source, resolution: int) -> torch.Tensor:
    """A path or bytes -> (3, R, R) in [0, 1]: shorter side resized to R (bicubic), centre crop."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = resolution / min(width, height)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.BICUBIC)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # (R, R, 3)
    return pixels.permute(2, 0, 1).contiguous()  # (3, R, R)


def folder_records(root: Path) -> list[Record]:
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    records = []
    for path in images:
        caption = path.with_suffix(".txt")
        records.append(Record(str(path), caption.read_text(encoding="utf-8").strip() if caption.is_file() else None))
    return records


def table_records(path: Path) -> list[Record]:
    """JSONL (one {"image", "text"} object a line) or CSV with columns image, text; paths relative to the file."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    log.warning("%s line %d is not JSON (%s): skipped", path.name, number, exc)
    return [Record(str(path.parent / row["image"]) if row.get("image") else "", row.get("text"))
            for row in rows if isinstance(row, dict)]


def records_for(source: str) -> list[Record]:
    """Map-style sources: a folder or a .jsonl/.csv file."""
    path = Path(source)
    if path.is_dir():
        records = folder_records(path)
    elif path.suffix.lower() in (".jsonl", ".json", ".csv") and path.is_file():
        records = table_records(path)
    else:
        raise DataError(f"'{source}' is not a folder, a .jsonl/.csv file or tar shards (*.tar)")
    if not records:
        raise DataError(f"no training samples in '{source}': expected images ({', '.join(IMAGE_EXTENSIONS)}) with "
                        "same-name .txt captions, or rows with 'image' and 'text'")
    return records


def is_sharded(source: str) -> bool:
    return source.endswith(".tar") or "{" in source or ("*" in source and ".tar" in source)


def read_record(record: Record, resolution: int):
    """-> {"pixels", "text"} or Bad(reason)."""
    if record.text is None:
        return Bad("missing caption")
    try:
        return {"pixels": load_image(record.image, resolution), "text": record.text}
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.debug("skipping %s: %s", record.image, exc)
        return Bad("unreadable image")


class PositionDataset(torch.utils.data.Dataset):
    """Indexed by global stream position p: epoch p // n, record permutation(seed, epoch)[p % n]."""

    def __init__(self, records, resolution: int, seed: int, read=read_record):
        self.records, self.resolution, self.seed, self.read = records, resolution, seed, read
        self._perm_epoch, self._perm = None, None

    def __len__(self):
        return len(self.records)

    def record_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.records))
        if self._perm_epoch != epoch:
            self._perm_epoch, self._perm = epoch, epoch_permutation(self.seed, epoch, len(self.records))
        return int(self._perm[offset])

    def __getitem__(self, position: int):
        index = self.record_index(position)
        item = self.read(self.records[index], self.resolution)
        if isinstance(item, dict):
            item["position"], item["index"] = position, index
        return item


class PositionBatches(torch.utils.data.Sampler):
    """Micro-batches of positions for one process: micro-step m covers the global positions
    [m*b*W, (m+1)*b*W); process r takes the r-th slice of b. Starts at ``first_micro_step`` (resume)."""

    def __init__(self, batch_size: int, rank: int, world: int, first_micro_step: int, micro_steps: int):
        self.b, self.rank, self.world = batch_size, rank, world
        self.first, self.total = first_micro_step, micro_steps

    def __len__(self):
        return max(0, self.total - self.first)

    def __iter__(self):
        for m in range(self.first, self.total):
            start = m * self.b * self.world + self.rank * self.b
            yield list(range(start, start + self.b))


def collate(items) -> dict:
    """Stack the usable samples; count the skipped ones by reason."""
    good = [item for item in items if isinstance(item, dict)]
    skipped = Counter(item.reason for item in items if isinstance(item, Bad))
    batch = {"skipped": skipped, "size": len(good)}
    if good:
        for key in good[0]:
            values = [item[key] for item in good]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else (
                torch.tensor(values) if isinstance(values[0], int) else values)
    return batch


class ShardStream(torch.utils.data.IterableDataset):
    """WebDataset-style tar shards (``key.jpg`` + ``key.txt`` members), streamed; shard order shuffled per epoch,
    shards split over processes and loader workers. A shard cut short ends that shard (counted), not the run.
    Positions are per-process stream positions; ``skip`` samples are passed over unread (resume)."""

    def __init__(self, shards, resolution: int, seed: int, rank: int, world: int, skip: int = 0):
        self.shards, self.resolution, self.seed = list(shards), resolution, seed
        self.rank, self.world, self.skip = rank, world, skip
        if not self.shards:
            raise DataError("no tar shards found")

    def _my_shards(self, epoch: int):
        order = epoch_permutation(self.seed, epoch, len(self.shards)).tolist()
        mine = [self.shards[i] for i in order][self.rank::self.world]
        info = torch.utils.data.get_worker_info()
        return mine if info is None else mine[info.id::info.num_workers]

    def __iter__(self):
        position = 0
        for epoch in count():
            shards = self._my_shards(epoch)
            if not shards:
                raise DataError(f"{len(self.shards)} shards for {self.world} processes: every process (and "
                                "loader worker) needs at least one shard")
            produced = 0
            for shard in shards:
                for sample in _samples_of(shard, read=position + produced >= self.skip):
                    if position + produced >= self.skip:
                        if isinstance(sample, dict):
                            sample["position"], sample["index"] = position + produced, -1
                        yield sample
                    produced += 1
            if produced == 0:
                raise DataError(f"the shards {shards[:3]} hold no samples")
            position += produced


def _samples_of(shard: str, read: bool = True):
    """Group a tar's members by key; yield {"image_bytes", "text"} dicts or Bad; never raises on a bad shard."""
    current, parts = None, {}
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if key != current and current is not None:
                    yield _shard_sample(parts)
                    parts = {}
                current = key
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise EOFError(f"member {member.name} has {len(data)} of {member.size} bytes")
                parts[ext.lower()] = data if read or ext == "txt" else b""
            _check_end(shard, tar.offset)
            if current is not None:
                yield _shard_sample(parts)
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("shard %s is cut short or unreadable (%s): the rest of it is skipped", shard, exc)
        yield Bad("shard cut short")


def _check_end(shard: str, offset: int) -> None:
    """tarfile takes a file that stops between members for a complete one: a whole tar ends in two zero blocks
    after its last member (when the size is known). Missing: the shard was cut short."""
    try:
        size = os.path.getsize(shard)
    except OSError:
        return
    if size - offset < 2 * tarfile.BLOCKSIZE:
        raise EOFError(f"no end-of-archive marker after {offset} of {size} bytes")


def _shard_sample(parts: dict):
    image = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
    if image is None:
        return Bad("no image in sample")
    if "txt" not in parts:
        return Bad("missing caption")
    return {"image_bytes": image, "text": parts["txt"].decode("utf-8", errors="replace").strip()}


class DecodedShards(torch.utils.data.IterableDataset):
    def __init__(self, stream: ShardStream):
        self.stream = stream

    def __iter__(self):
        for sample in self.stream:
            if isinstance(sample, Bad):
                yield sample
                continue
            try:
                pixels = load_image(sample.pop("image_bytes"), self.stream.resolution)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                log.debug("skipping shard sample: %s", exc)
                yield Bad("unreadable image")
                continue
            yield dict(sample, pixels=pixels)
