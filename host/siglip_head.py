"""SigLIP's pooling head for a host ClipVisionModel: the host loads SigLIP without its attention-pooling head (the
file's ``vision_model.head.*`` keys are dropped), so the head is found in the ``clip_vision`` model folders by
contents: a file with the head whose tower tensors equal the loaded model's, bit for bit
(docs/inference.md#siglip-pooled-embedding). Never by file name."""
import logging
import weakref
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

import folder_paths

from ..ipadapter_core import scan
from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.siglip_head import (HEAD_PREFIX, NO_POOLING_HEAD, SO400M_HEADS, SiglipPoolingHead,
                                          build_pooling_head, strip_head_prefix)

CLIP_VISION_FOLDER = "clip_vision"
SUFFIXES = (".safetensors", ".sft")  # read by their headers only; pickled files are never opened for this
PROBE = f"{HEAD_PREFIX}probe"
# Tensors of the tower compared with the loaded model's (cast to its parameter dtype), small and file-specific.
FINGERPRINT = ("vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias",
               "vision_model.embeddings.patch_embedding.bias", "vision_model.encoder.layers.0.layer_norm1.weight",
               "vision_model.encoder.layers.0.layer_norm1.bias")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadFile:
    """One scanned clip_vision file: ``kind`` for messages; ``fingerprint`` ({key: tensor} as stored) when it has
    a pooling head and the tower tensors to compare."""
    path: str
    name: str
    kind: str
    fingerprint: dict | None = field(default=None, compare=False)


def classify_head_file(path, name: str) -> HeadFile:
    """Keys from the header; the few fingerprint tensors only of files with ``vision_model.head.probe``."""
    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            keys = set(f.keys())
            if PROBE not in keys:
                return HeadFile(str(path), name, "no SigLIP pooling head")
            missing = [key for key in FINGERPRINT if key not in keys]
            if missing:
                return HeadFile(str(path), name, f"a pooling head without '{missing[0]}'")
            with torch.inference_mode(False):  # kept in a cache: ordinary tensors
                fingerprint = {key: f.get_tensor(key) for key in FINGERPRINT}
    except Exception as exc:  # safetensors raises its own error type (and OSError) for unreadable files
        return HeadFile(str(path), name, f"not readable as safetensors ({type(exc).__name__})")
    return HeadFile(str(path), name, "SigLIP weights with a pooling head", fingerprint)


# Cached by path, size and modification time for the life of the process (ipadapter_core/scan.py FileScan).
_SCAN = scan.FileScan(classify_head_file)
# ClipVisionModel -> (folder state, head or None); "not found" holds until a clip_vision file changes.
_HEADS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _listed() -> list[tuple[str, str]]:
    """(listed name, full path) of the clip_vision folders' safetensors files, sorted by name."""
    names = sorted(n for n in folder_paths.get_filename_list(CLIP_VISION_FOLDER) if n.lower().endswith(SUFFIXES))
    return [(n, p) for n in names if (p := folder_paths.get_full_path(CLIP_VISION_FOLDER, n)) is not None]


def _state(files) -> tuple:
    return tuple((name, path, stamp) for name, path in files if (stamp := scan.file_stamp(path)) is not None)


def is_siglip(clip_vision) -> bool:
    """The host's SigLIP towers end in a LayerNorm over every token (``output_layernorm``); CLIP's do not."""
    vision = getattr(getattr(clip_vision, "model", None), "vision_model", None)
    return getattr(vision, "output_layernorm", False) is True


def _same_bits(stored: torch.Tensor, param: torch.Tensor) -> bool:
    if tuple(stored.shape) != tuple(param.shape):
        return False
    loaded = param.detach().to("cpu").contiguous().flatten()
    cast = stored.to(loaded.dtype).contiguous().flatten()
    return torch.equal(cast.view(torch.uint8), loaded.view(torch.uint8))


def _loaded_fingerprint(clip_vision) -> dict | None:
    params = dict(clip_vision.model.named_parameters())
    return {key: params[key] for key in FINGERPRINT} if all(key in params for key in FINGERPRINT) else None


def _matches(found: HeadFile, loaded: dict) -> bool:
    return found.fingerprint is not None and all(_same_bits(found.fingerprint[k], loaded[k]) for k in FINGERPRINT)


def _read_head(found: HeadFile, clip_vision) -> SiglipPoolingHead:
    """Only the ``vision_model.head.*`` tensors of the matching file, built into the head (errors name the file)."""
    vision = clip_vision.model.vision_model
    heads = getattr(vision.encoder.layers[0].self_attn, "heads", SO400M_HEADS)
    width = vision.post_layernorm.weight.shape[0]
    with torch.inference_mode(False), safe_open(found.path, "pt", device="cpu") as f:
        flat = {key: f.get_tensor(key) for key in f.keys() if key.startswith(HEAD_PREFIX)}
        try:
            return build_pooling_head(strip_head_prefix(flat), heads=heads, width=width)
        except IPAdapterError as exc:
            raise type(exc)(f"models/clip_vision/{found.name}: {exc}") from exc


def _find_head(clip_vision, files) -> SiglipPoolingHead | None:
    loaded = _loaded_fingerprint(clip_vision)
    if loaded is None:
        return None
    for found in _SCAN(files):
        if _matches(found, loaded):
            log.info("SigLIP pooling head from models/clip_vision/%s", found.name)
            return _read_head(found, clip_vision)
    return None


def pooling_head(clip_vision) -> SiglipPoolingHead | None:
    """The attention-pooling head (float32, CPU, eval) of a host ClipVisionModel of the SigLIP kind, from the
    clip_vision file whose tower tensors equal the loaded ones; None for other encoders (no file is read) and
    when no file has it (then ``no_pooling_head_message()`` says what to do). Cached per model object."""
    if not is_siglip(clip_vision):
        return None
    cached = _HEADS.get(clip_vision)
    if cached is not None and cached[1] is not None:
        return cached[1]
    files = _listed()
    state = _state(files)
    if cached is not None and cached[0] == state:
        return None
    head = _find_head(clip_vision, files)
    _HEADS[clip_vision] = (state, head)
    return head


def no_pooling_head_message() -> str:
    """What is missing and the fix (ipadapter_core NO_POOLING_HEAD), with what the clip_vision files are."""
    found = _SCAN(_listed())
    return (f"{NO_POOLING_HEAD}. Found: {scan.listing(found, CLIP_VISION_FOLDER)} (none of them holds the loaded "
            "SigLIP's weights with its head)")
