"""Finding an adapter and its CLIP vision encoder in folders by their contents, never by their names
(docs/formats.md#finding-files-by-contents).

A file is classified from its keys and shapes alone: a ``.safetensors`` file from its JSON header (no tensor is
read), a ``.bin``/``.pt``/``.pth`` file with ``torch.load(weights_only=True, mmap=True)`` onto the meta device (no
pickled code runs, no values are read). Results are cached by path, size and modification time, so a folder is
read once until a file in it changes.
"""
import json
import os
import re
import struct
from dataclasses import dataclass
from typing import Iterable

import torch

from .errors import AdapterFileError, InputError, IPAdapterError, UnsupportedAdapterError
from .layers import FAMILY_NAMES
from .spec import ENCODERS_BY_HIDDEN_WIDTH, ENCODERS_BY_POOLED_WIDTH, AdapterSpec, detect_spec
from .weights import nest

VIT_H, VIT_BIGG = "OpenCLIP ViT-H/14", "OpenCLIP ViT-bigG/14"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # a safetensors header is JSON text; real ones are < 1 MiB
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class Need:
    """What a preset loads for one UNet family: the adapter kind, its encoder, and the official file that has
    them (named only in messages, to say what to download)."""
    kind: str
    encoder: str | None  # None: no CLIP vision encoder needed
    download: str
    variants: tuple[str, ...] = ()  # FaceID: the variants its contents give (spec.variant with 'auto')
    load_as: str = "auto"  # FaceID: the faceid_variant to load it with (Plus v2: what the contents cannot say)


PORTRAITS = ("portrait", "portrait unnorm")
# preset -> UNet family -> what it loads; a family missing: no file of it (docs/formats.md#presets-by-contents).
PRESETS: dict[str, dict[str, Need]] = {
    "light": {"sd15": Need("base", VIT_H, "ip-adapter_sd15_light_v11.bin")},
    "standard": {"sd15": Need("base", VIT_H, "ip-adapter_sd15.safetensors"),
                 "sdxl": Need("base", VIT_H, "ip-adapter_sdxl_vit-h.safetensors")},
    "vit-G": {"sd15": Need("base", VIT_BIGG, "ip-adapter_sd15_vit-G.safetensors"),
              "sdxl": Need("base", VIT_BIGG, "ip-adapter_sdxl.safetensors")},
    "plus": {"sd15": Need("plus", VIT_H, "ip-adapter-plus_sd15.safetensors"),
             "sdxl": Need("plus", VIT_H, "ip-adapter-plus_sdxl_vit-h.safetensors")},
    "plus face": {"sd15": Need("plus", VIT_H, "ip-adapter-plus-face_sd15.safetensors"),
                  "sdxl": Need("plus", VIT_H, "ip-adapter-plus-face_sdxl_vit-h.safetensors")},
    "full face": {"sd15": Need("full_face", VIT_H, "ip-adapter-full-face_sd15.safetensors")},
    # FaceID (h94/IP-Adapter-FaceID): matched by the variant their contents give; Plus and Plus v2 files are the
    # same layout, so 'faceid plus v2' loads a Plus file as v2 (docs/faceid.md#formats).
    "faceid": {"sd15": Need("faceid", None, "ip-adapter-faceid_sd15.bin", ("faceid",)),
               "sdxl": Need("faceid", None, "ip-adapter-faceid_sdxl.bin", ("faceid",))},
    "faceid plus": {"sd15": Need("faceid_plus", VIT_H, "ip-adapter-faceid-plus_sd15.bin", ("plus",), "plus")},
    "faceid plus v2": {"sd15": Need("faceid_plus", VIT_H, "ip-adapter-faceid-plusv2_sd15.bin", ("plus",), "plus v2"),
                       "sdxl": Need("faceid_plus", VIT_H, "ip-adapter-faceid-plusv2_sdxl.bin", ("plus",), "plus v2")},
    "faceid portrait": {"sd15": Need("faceid_portrait", None, "ip-adapter-faceid-portrait-v11_sd15.bin", PORTRAITS),
                        "sdxl": Need("faceid_portrait", None, "ip-adapter-faceid-portrait_sdxl.bin", PORTRAITS)},
}
# Presets whose files the contents cannot tell apart (same layout, other training data).
LOOK_ALIKE = {"light": "standard", "standard": "light", "plus": "plus face", "plus face": "plus"}


@dataclass(frozen=True)
class Found:
    """One scanned file: what its contents say it is. ``spec`` for a usable adapter, ``encoder`` for a usable
    CLIP vision file; ``kind`` is the short description a message lists."""
    path: str
    name: str  # as the host lists it (relative to its folder)
    kind: str
    spec: AdapterSpec | None = None
    encoder: str | None = None


def safetensors_header(path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict]:
    """{key: (dtype name, shape)} and the metadata of a ``.safetensors`` file, from its header alone; a header
    that does not fit the file (truncated, not safetensors) raises AdapterFileError."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, MAX_HEADER_BYTES):
            raise AdapterFileError("no safetensors header: truncated or not a safetensors file")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterFileError(f"unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise AdapterFileError("unreadable safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    entries, end = {}, 0
    for key, entry in header.items():
        try:
            dtype, shape, (_, stop) = entry["dtype"], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterFileError(f"unreadable safetensors header entry '{key}'") from exc
        entries[key], end = (dtype, shape), max(end, int(stop))
    if 8 + length + end > size:
        raise AdapterFileError(f"truncated: the header describes {8 + length + end} bytes, the file has {size}; "
                               "download it again")
    return entries, metadata


def _meta_tensors(entries) -> dict[str, torch.Tensor]:
    """Shape-only stand-ins (meta device: no memory) that detect_spec reads like the real tensors."""
    return {key: torch.empty(shape, dtype=SAFETENSORS_DTYPES.get(dtype, torch.uint8), device="meta")
            for key, (dtype, shape) in entries.items()}


def _flatten_pickled(data, prefix="") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten_pickled(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
    return out


def file_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of a weight file as a meta tensor (shapes and dtypes only), by its flat key."""
    if str(path).endswith(".safetensors"):
        return _meta_tensors(safetensors_header(path)[0])
    try:
        data = torch.load(str(path), map_location="meta", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        raise AdapterFileError(f"not read as a weights-only torch file ({type(exc).__name__}); it is truncated, "
                               "in the pre-1.6 torch format or holds code: convert it to .safetensors") from exc
    if not isinstance(data, dict):
        raise AdapterFileError(f"holds a {type(data).__name__}, not a dict of tensors")
    return _flatten_pickled(data)


def _encoder_name(hidden: int, projection: int | None, layers: int) -> str | None:
    """The encoder a CLIP vision model's widths and depth say it is (docs/formats.md#encoders), or None."""
    name = ENCODERS_BY_HIDDEN_WIDTH.get(hidden)
    if name is None or ENCODERS_BY_POOLED_WIDTH.get(projection) != name or ENCODER_DEPTHS.get(name) != layers:
        return None
    return name


ENCODER_DEPTHS = {VIT_H: 32, VIT_BIGG: 48, "CLIP ViT-L/14": 24}
# (patch embedding, layer key pattern, projection key, projection's output axis) of the layouts the host loads:
# transformers' names, and OpenCLIP's own (the host converts those on load).
_CLIP_LAYOUTS = (
    ("vision_model.embeddings.patch_embedding.weight", re.compile(r"^vision_model\.encoder\.layers\.(\d+)\."),
     "visual_projection.weight", 0),
    ("visual.conv1.weight", re.compile(r"^visual\.transformer\.resblocks\.(\d+)\."), "visual.proj", 1),
)


def clip_vision_encoder(tensors) -> tuple[str | None, str]:
    """(encoder name or None, description) of a CLIP vision file's tensors, from keys and shapes."""
    for patch_key, layer_key, projection_key, axis in _CLIP_LAYOUTS:
        if patch_key not in tensors:
            continue
        hidden = tensors[patch_key].shape[0]
        layers = len({m[1] for m in map(layer_key.match, tensors) if m})
        projection = tensors[projection_key].shape[axis] if projection_key in tensors else None
        name = _encoder_name(hidden, projection, layers)
        if name is not None:
            return name, name
        return None, (f"a vision encoder of width {hidden}, {layers} layers, projection {projection}: not one "
                      "an IP-Adapter uses")
    return None, "not a CLIP vision file"


def _short(exc: Exception) -> str:
    return str(exc).split(": ", 1)[0][:120] if isinstance(exc, AdapterFileError) else str(exc)[:120]


def classify_adapter(path, name: str) -> Found:
    """What an ``ipadapter`` folder file is, from its keys and shapes only."""
    try:
        tensors = file_tensors(path)
        spec = detect_spec(nest(tensors))  # .bin files' nested dicts were flattened to the same keys
    except UnsupportedAdapterError as exc:  # a family this version recognises and does not run
        return Found(str(path), name, f"not supported: {_short(exc)}")
    except IPAdapterError as exc:
        return Found(str(path), name, f"not usable: {_short(exc)}")
    return Found(str(path), name, adapter_kind(spec), spec=spec)


def adapter_kind(spec: AdapterSpec) -> str:
    if spec.is_faceid:
        return f"{FAMILY_NAMES[spec.family]} FaceID {spec.variant} adapter"
    return f"{FAMILY_NAMES[spec.family]} {spec.kind.replace('_', ' ')} adapter ({spec.encoder})"


def classify_clip_vision(path, name: str) -> Found:
    """What a ``clip_vision`` folder file is, from its keys and shapes only."""
    try:
        encoder, kind = clip_vision_encoder(file_tensors(path))
    except IPAdapterError as exc:
        return Found(str(path), name, f"not usable: {_short(exc)}")
    return Found(str(path), name, kind, encoder=encoder)


def file_stamp(path) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file, or None when it is gone: what says it was written again."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class FileScan:
    """A classifier with a cache by path, size and modification time: a file is read again only when it was
    written again (or renamed onto)."""

    def __init__(self, classify):
        self._classify, self._seen = classify, {}

    def __call__(self, files: Iterable[tuple[str, str]]) -> list[Found]:
        """``files``: (listed name, path) pairs -> what each is, in the given order; vanished files are left out."""
        found = []
        for name, path in files:
            key = file_stamp(path)
            if key is None:
                continue
            hit = self._seen.get(path)
            if hit is None or hit[0] != key or hit[1].name != name:
                hit = (key, self._classify(path, name))
                self._seen[path] = hit
            found.append(hit[1])
        return found


AUTO = "auto"
LISTED = 12  # files named per folder in a message


def listing(found: list[Found], folder: str) -> str:
    if not found:
        return f"models/{folder} is empty"
    shown = "; ".join(f"{f.name} → {f.kind}" for f in found[:LISTED])
    return f"models/{folder}: {shown}" + (f"; and {len(found) - LISTED} more" if len(found) > LISTED else "")


def preset_need(preset: str, family: str) -> Need:
    if preset not in PRESETS:
        raise InputError(f"preset: {preset!r} is not one of the options ({', '.join(PRESETS)}): pick one")
    need = PRESETS[preset].get(family)
    if need is None:
        others = [p for p, by_family in PRESETS.items() if family in by_family]
        raise InputError(f"preset '{preset}' has no {FAMILY_NAMES[family]} adapter (it is "
                         f"{'/'.join(FAMILY_NAMES[f] for f in PRESETS[preset])} only): pick one of "
                         f"{', '.join(others)}")
    return need


def _fits(found: Found, need: Need, family: str) -> bool:
    spec = found.spec
    if spec is None or spec.family != family:
        return False
    if need.variants:  # FaceID: by the variant the contents give
        return spec.is_faceid and spec.variant in need.variants
    return not spec.is_faceid and spec.kind == need.kind and (need.encoder is None or spec.encoder == need.encoder)


def _wanted(need: Need, family: str) -> str:
    encoder = f" ({need.encoder})" if need.encoder else ""
    return f"an {FAMILY_NAMES[family]} {need.kind.replace('_', ' ')} adapter{encoder}"


def _named(adapters: list[Found], ipadapter_name: str, need: Need, family: str, preset: str) -> list[Found]:
    picked = [a for a in adapters if a.name == ipadapter_name]
    if not picked:
        raise InputError(f"ipadapter_name: '{ipadapter_name}' is not in models/ipadapter: pick one of the list "
                         f"or '{AUTO}'")
    if not _fits(picked[0], need, family):
        raise InputError(f"ipadapter_name: '{ipadapter_name}' is {picked[0].kind}; preset '{preset}' needs "
                         f"{_wanted(need, family)}: pick a file of that kind, or '{AUTO}'")
    return picked


def choose(preset: str, family: str, adapters: list[Found], encoders: list[Found],
           ipadapter_name: str = AUTO) -> tuple[Found, Found | None]:
    """The adapter file and CLIP vision file a preset uses with a UNet family, from scanned folders; otherwise
    an InputError listing what was found (name → kind) and what is missing."""
    need = preset_need(preset, family)
    fits = [a for a in adapters if _fits(a, need, family)]
    if ipadapter_name != AUTO:
        fits = _named(adapters, ipadapter_name, need, family, preset)
    matching = [e for e in encoders if e.encoder == need.encoder] if need.encoder else [None]
    missing = ([] if fits else [f"{_wanted(need, family)} in models/ipadapter (the official file is "
                                f"{need.download}, h94/IP-Adapter)"])
    if not matching:
        missing.append(f"an {need.encoder} CLIP vision file in models/clip_vision")
    if missing:
        raise InputError(f"preset '{preset}' for {FAMILY_NAMES[family]}: missing {' and '.join(missing)}. Found: "
                         f"{listing(adapters, 'ipadapter')}; {listing(encoders, 'clip_vision')}")
    if len(fits) > 1:
        alike = (f"the contents of '{preset}' and '{LOOK_ALIKE[preset]}' files are the same layout and cannot "
                 "tell them apart" if preset in LOOK_ALIKE else "their contents are the same kind")
        raise InputError(f"preset '{preset}' for {FAMILY_NAMES[family]}: {len(fits)} files fit "
                         f"({', '.join(f.name for f in fits)}); {alike}: pick one in ipadapter_name")
    return fits[0], matching[0]
