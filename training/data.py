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


def keep_batch(batch):
    """The loader's collate function for streams: their micro-batches arrive collated."""
    return batch


class ShardStream(torch.utils.data.IterableDataset):
    """WebDataset-style tar shards (uncompressed; ``key.jpg`` + ``key.txt`` members), streamed; shard order
    shuffled per epoch. A shard cut short ends that shard (counted), not the run.

    Global positions: the stream is one sequence over every epoch, and each sample (a skipped one too: a bad
    sample, a cut shard) has its index p in it. As for map-style data (PositionBatches), micro-step m is the
    positions [m*b*W, (m+1)*b*W) and process r takes the r-th slice of b. Every loader worker walks the whole
    stream (tar headers; bytes are read only for its own samples) and yields whole micro-batches, worker w of N
    the micro-steps first + w, first + w + N, ...: the order in which the DataLoader takes batches from its
    workers, so N workers yield what one worker yields. A resumed run starts at ``first_micro_step``.
    Yields (items, pass size): the pass size (samples in one epoch) once the micro-step lies past the first pass
    (the same on every process and worker), else 0."""

    def __init__(self, shards, resolution: int, seed: int, batch_size: int, rank: int = 0, world: int = 1,
                 first_micro_step: int = 0):
        self.shards, self.resolution, self.seed = list(shards), resolution, seed
        self.b, self.rank, self.world, self.first = batch_size, rank, world, first_micro_step
        self.pass_size = 0
        if not self.shards:
            raise DataError("no tar shards found")

    def slot(self, position: int) -> int | None:
        """This process's micro-batch a position falls in, counted from the first one (None: another
        process's, or before the resume point)."""
        micro, offset = divmod(position, self.b * self.world)
        return micro - self.first if offset // self.b == self.rank and micro >= self.first else None

    def walk(self, mine):
        """(position, sample) over the whole stream, epoch after epoch; the sample is None where ``mine(p)`` is
        false (its bytes are not read). Sets ``pass_size`` at the end of the first epoch."""
        position = 0
        for epoch in count():
            start = position
            for index in epoch_permutation(self.seed, epoch, len(self.shards)).tolist():
                first = position
                for sample in _samples_of(self.shards[index], wanted=lambda k, first=first: mine(first + k)):
                    yield position, sample
                    position += 1
            if position == start:
                raise DataError(f"the shards {self.shards[:3]} hold no samples")
            self.pass_size = self.pass_size or position - start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)

        def mine(position):
            slot = self.slot(position)
            return slot is not None and slot % workers == worker

        items = []
        for position, sample in self.walk(mine):
            if not mine(position):
                continue
            if isinstance(sample, dict):
                sample["position"], sample["index"] = position, -1
            items.append(sample)
            if len(items) == self.b:
                micro = position // (self.b * self.world)
                past_first_pass = self.pass_size and micro * self.b * self.world >= self.pass_size
                yield items, (self.pass_size if past_first_pass else 0)
                items = []


def _samples_of(shard: str, wanted=lambda k: True):
    """The k-th sample of a tar: {"image_bytes", "text"} or Bad, or None where ``wanted(k)`` is false (its bytes
    are not read: a seekable tar's headers are read alone). A shard cut short or unreadable ends with one Bad;
    never raises."""
    done = 0
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for k, parts in _sample_parts(shard, tar, wanted):
                yield _shard_sample(parts) if wanted(k) else None
                done = k + 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        if wanted(done):  # said once, by the worker that owns this position
            log.warning("shard %s is cut short or unreadable (%s): the rest of it is skipped", shard, exc)
        yield Bad("shard cut short") if wanted(done) else None


def _sample_parts(shard: str, tar, wanted):
    """(k, {extension: bytes}) per member key, in file order; the bytes empty where ``wanted(k)`` is false."""
    size = os.path.getsize(shard)
    current, parts, k = None, {}, 0
    for member in tar:
        if not member.isfile():
            continue
        if member.offset_data + member.size > size:
            raise EOFError(f"member {member.name} ends after the file's {size} bytes")
        key, _, ext = member.name.rpartition(".")
        if key != current and current is not None:
            yield k, parts
            parts, k = {}, k + 1
        current = key
        parts[ext.lower()] = tar.extractfile(member).read() if wanted(k) else b""
    _check_end(shard, tar.offset)  # before the last sample: a cut shard's last sample may be incomplete
    if current is not None:
        yield k, parts


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
    """The stream's micro-batches, images decoded and collated, with "pass_size" (the loader's batches)."""

    def __init__(self, stream: ShardStream):
        self.stream = stream

    def __iter__(self):
        for items, pass_size in self.stream:
            batch = collate([self.decode(item) for item in items])
            batch["pass_size"] = pass_size
            yield batch

    def decode(self, sample):
        if isinstance(sample, Bad):
            return sample
        try:
            pixels = load_image(sample.pop("image_bytes"), self.stream.resolution)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            log.debug("skipping shard sample: %s", exc)
            return Bad("unreadable image")
        return dict(sample, pixels=pixels)
