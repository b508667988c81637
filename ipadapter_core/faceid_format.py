"""The FaceID family's files (h94/IP-Adapter-FaceID), read from keys and shapes (docs/faceid.md#formats).

What the contents cannot say is decided by the loader's ``faceid_variant``: Plus and Plus v2 files have the same
keys and shapes (v2 adds a shortcut at run time); a portrait MLP file can be run on the normalised (``portrait``)
or the raw (``portrait unnorm``) embedding. ``auto`` is the reference's default.
"""
import re
from typing import Mapping

from .checks import shape
from .errors import AdapterFileError

FACEID_VARIANTS = ("auto", "plus", "plus v2", "portrait", "portrait unnorm")
FACE_EMBED_WIDTH = 512  # ArcFace (insightface buffalo_l / antelopev2) embeddings
MLP_KEYS = {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"}
_LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
_LORA_PARTS = {(name, side) for name in ("q", "k", "v", "out") for side in ("down", "up")}

# file kind -> (the variant ``auto`` means, the variants the file can run as)
_ALLOWED = {
    "faceid": ("faceid", ("faceid",)),
    "faceid_plus": ("plus", ("plus", "plus v2")),
    "portrait": ("portrait", ("portrait", "portrait unnorm")),
    "faceid_resampler": ("portrait unnorm", ("portrait unnorm", "portrait")),
}


def is_lora_key(key: str) -> bool:
    return _LORA_KEY.match(key) is not None


def is_faceid(image_proj: Mapping, ip_layers: Mapping) -> bool:
    """A LoRA in ``ip_adapter``, the face resampler, the face MLP (proj.0/proj.2/norm), or a Perceiver resampler
    whose input is a 512-wide face embedding (no CLIP encoder has hidden width 512)."""
    if any(is_lora_key(key) for key in ip_layers) or any(k.startswith("perceiver_resampler.") for k in image_proj):
        return True
    if MLP_KEYS <= set(image_proj) and "proj.3.weight" not in image_proj:
        return True
    return "proj_in.weight" in image_proj and shape(image_proj, "proj_in.weight")[1] == FACE_EMBED_WIDTH


def _file_kind(image_proj: Mapping, has_lora: bool) -> str:
    keys = set(image_proj)
    if "perceiver_resampler.proj_in.weight" in keys and MLP_KEYS <= keys:
        return "faceid_plus"
    if keys == MLP_KEYS:
        return "faceid" if has_lora else "portrait"
    if "latents" in keys and "proj_in.weight" in keys:
        return "faceid_resampler"
    raise AdapterFileError(f"a FaceID file with an unknown projection (image_proj keys {sorted(keys)[:6]}): "
                           "expected the face MLP (proj.0, proj.2, norm), optionally with perceiver_resampler.*; "
                           "use an official h94/IP-Adapter-FaceID file")


def resolve_variant(kind: str, variant: str, describe: str) -> str:
    """The variant a file runs as: ``variant`` when the file allows it, the reference's default for ``auto``."""
    default, allowed = _ALLOWED[kind]
    if variant == "auto":
        return default
    if variant not in allowed:
        raise AdapterFileError(
            f"faceid_variant '{variant}' does not fit this file: it is {describe}, which runs as "
            f"{' or '.join(repr(a) for a in allowed)}; set faceid_variant to 'auto' or one of those")
    return variant


def _mlp_spec(image_proj: Mapping) -> dict:
    hidden, embed = shape(image_proj, "proj.0.weight")
    cross_dim = shape(image_proj, "norm.weight")[0]
    rows = shape(image_proj, "proj.2.weight")[0]
    if (embed != FACE_EMBED_WIDTH or hidden != 2 * embed or shape(image_proj, "proj.2.weight")[1] != hidden
            or rows % cross_dim):
        raise AdapterFileError(f"FaceID projection: proj.0 {(hidden, embed)}, proj.2 "
                               f"{shape(image_proj, 'proj.2.weight')} and norm ({cross_dim},) do not fit a "
                               f"{FACE_EMBED_WIDTH}-wide face embedding; the file is damaged")
    return dict(tokens=rows // cross_dim, encoder_width=embed, cross_attention_dim=cross_dim)


def _resampler_sizes(image_proj: Mapping, prefix: str) -> dict:
    dim, width = shape(image_proj, f"{prefix}proj_in.weight")
    depth = len({key[len(prefix):].split(".")[1] for key in image_proj if key.startswith(f"{prefix}layers.")})
    inner = shape(image_proj, f"{prefix}layers.0.0.to_q.weight")[0]
    ff = shape(image_proj, f"{prefix}layers.0.1.1.weight")[0]
    return dict(resampler_dim=dim, resampler_depth=depth, resampler_heads=inner // 64, resampler_ff_mult=ff // dim,
                input_width=width)


def faceid_projection_spec(image_proj: Mapping, ip_layers: Mapping, variant: str) -> dict:
    """The AdapterSpec fields of a FaceID file's projection (kind, tokens, widths, variant, resampler sizes)."""
    has_lora = any(is_lora_key(key) for key in ip_layers)
    kind = _file_kind(image_proj, has_lora)
    names = {"faceid": "a FaceID file", "faceid_plus": "a FaceID Plus / Plus v2 file",
             "portrait": "a FaceID Portrait file", "faceid_resampler": "a FaceID Portrait unnorm file"}
    fields = dict(feature="face", variant=resolve_variant(kind, variant, names[kind]))
    if kind == "faceid_resampler":
        sizes = _resampler_sizes(image_proj, "")
        sizes.pop("input_width")
        return dict(fields, kind=kind, tokens=shape(image_proj, "latents")[1], encoder_width=FACE_EMBED_WIDTH,
                    cross_attention_dim=shape(image_proj, "proj_out.weight")[0], **sizes)
    fields.update(_mlp_spec(image_proj), kind="faceid_plus" if kind == "faceid_plus" else "faceid")
    if kind == "faceid_plus":
        sizes = _resampler_sizes(image_proj, "perceiver_resampler.")
        fields.update(clip_width=sizes.pop("input_width"), **sizes)
    return fields


def lora_layers(ip_layers: Mapping, inner_of: Mapping[int, int], cross_dim: int) -> tuple[int, tuple[int, ...]]:
    """(rank, the numbers N it patches) of the LoRA in ``ip_adapter``: every N complete (q, k, v, out; down and
    up), one rank, shapes that fit layer N's width (self-attention N = cross-attention N + 1's block)."""
    found: dict[int, dict[tuple[str, str], tuple]] = {}
    for key in ip_layers:
        match = _LORA_KEY.match(key)
        if match:
            found.setdefault(int(match[1]), {})[(match[2], match[3])] = shape(ip_layers, key)
    if not found:
        return 0, ()
    ranks = set()
    for n, parts in sorted(found.items()):
        missing = sorted(f"to_{name}_lora.{side}" for name, side in _LORA_PARTS - set(parts))
        if missing:
            raise AdapterFileError(f"layer {n}'s LoRA lacks {', '.join(missing)}: the file is incomplete; "
                                   "download it again")
        width = inner_of.get(n | 1)  # N and N + 1 are the self- and cross-attention of one transformer block
        kv_in = cross_dim if n % 2 else width
        want = {("q", "down"): (None, width), ("k", "down"): (None, kv_in), ("v", "down"): (None, kv_in),
                ("out", "down"): (None, width)}
        for (name, side), dims in parts.items():
            rank = dims[0] if side == "down" else dims[1]
            ranks.add(rank)
            expected_in = want.get((name, side), (None, None))[1]
            fits = len(dims) == 2 and width is not None and (
                dims[1] == expected_in if side == "down" else dims[0] == width)
            if not fits:
                raise AdapterFileError(f"layer {n}'s LoRA to_{name}_lora.{side} has shape {dims}, which does not "
                                       f"fit the layer (width {width}): the file is damaged or mixes two adapters")
    if len(ranks) != 1:
        raise AdapterFileError(f"the LoRA has several ranks {sorted(ranks)}: the file is damaged")
    return ranks.pop(), tuple(sorted(found))
