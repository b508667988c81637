"""What an IP-Adapter weight file is, read from its keys and shapes only (never from its file name)."""
import json
import re
from dataclasses import asdict, dataclass
from typing import Mapping

import torch

from .dit_spec import unsupported_dit_layout
from .checks import shape
from .errors import AdapterFileError, UnsupportedAdapterError
from .faceid_format import FACEID_VARIANTS, faceid_projection_spec, is_faceid, is_lora_key, lora_layers
from .layers import FAMILY_NAMES, family_for_layers

# Image encoders IP-Adapters are trained on, by the width of what they feed the projection.
# pooled: the projected `image_embeds`; hidden: the penultimate hidden states.
ENCODERS_BY_POOLED_WIDTH = {1024: "OpenCLIP ViT-H/14", 1280: "OpenCLIP ViT-bigG/14", 768: "CLIP ViT-L/14"}
ENCODERS_BY_HIDDEN_WIDTH = {1280: "OpenCLIP ViT-H/14", 1664: "OpenCLIP ViT-bigG/14", 1024: "CLIP ViT-L/14",
                            1152: "SigLIP so400m-384"}

_LAYER_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
_BASE_KEYS = {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
_FULL_FACE_KEYS = {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "proj.3.weight", "proj.3.bias"}


@dataclass(frozen=True)
class AdapterSpec:
    """Everything needed to build the modules of an adapter file and check what it can be used with.

    kind: "base" (Linear + LayerNorm; also light and vit-G), "plus" (Perceiver resampler; also plus-face),
    "full_face" (MLP over every encoder token), or the FaceID family (docs/faceid.md#formats): "faceid" (MLP over
    the face embedding; FaceID and Portrait), "faceid_plus" (that MLP + a face resampler over the face crop's CLIP
    hidden states) or "faceid_resampler" (a Perceiver resampler over the face embedding: Portrait unnorm).
    feature: which encoder output the projection reads, "pooled", "hidden" or "face". tokens: image tokens per
    reference image (per face). encoder_width: width of that feature (512 for a face embedding).
    """
    kind: str
    feature: str
    tokens: int | None  # None: one token per encoder token (full_face)
    encoder_width: int
    cross_attention_dim: int
    family: str
    layers: tuple[tuple[int, int], ...]  # (N, inner width of that layer's to_k_ip)
    resampler_dim: int = 0  # plus only
    resampler_depth: int = 0
    resampler_heads: int = 0
    resampler_ff_mult: int = 0
    variant: str = ""  # FaceID only: "faceid", "plus", "plus v2", "portrait", "portrait unnorm"
    clip_width: int = 0  # faceid_plus: the hidden width of the CLIP encoder it reads the face crop with
    lora_rank: int = 0  # FaceID files with an embedded LoRA: its rank; 0 without
    lora_layers: tuple[int, ...] = ()  # the attention numbers N (self- and cross-attention) the LoRA patches

    @property
    def is_faceid(self) -> bool:
        return self.feature == "face"

    @property
    def encoder(self) -> str:
        if self.is_faceid:
            face = "a face prompt (Encode Face Prompt)"
            if not self.clip_width:
                return face
            clip = ENCODERS_BY_HIDDEN_WIDTH.get(self.clip_width, f"a CLIP vision model of width {self.clip_width}")
            return f"{face} with {clip}"
        names = ENCODERS_BY_POOLED_WIDTH if self.feature == "pooled" else ENCODERS_BY_HIDDEN_WIDTH
        return names.get(self.encoder_width, f"a CLIP vision model with {self.feature} width {self.encoder_width}")

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES[self.family]

    @property
    def describe(self) -> str:
        kind = f"FaceID {self.variant}" if self.is_faceid else self.kind.replace('_', '-')
        return f"{self.family_name} {kind} IP-Adapter (needs {self.encoder})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AdapterSpec":
        data = json.loads(text)
        data["layers"] = tuple(tuple(pair) for pair in data["layers"])
        data["lora_layers"] = tuple(data.get("lora_layers", ()))
        return cls(**data)


def _projection_spec(image_proj: Mapping) -> dict:
    """kind, feature, tokens, widths (and resampler sizes) from the image_proj keys and shapes."""
    keys = set(image_proj)
    if keys == _BASE_KEYS:
        cross_dim = shape(image_proj, "norm.weight")[0]
        rows, embed = shape(image_proj, "proj.weight")
        return dict(kind="base", feature="pooled", tokens=rows // cross_dim, encoder_width=embed,
                    cross_attention_dim=cross_dim)
    if keys == _FULL_FACE_KEYS:
        return dict(kind="full_face", feature="hidden", tokens=None,
                    encoder_width=shape(image_proj, "proj.0.weight")[1],
                    cross_attention_dim=shape(image_proj, "proj.3.weight")[0])
    if "latents" in keys and "proj_in.weight" in keys:
        _, tokens, dim = shape(image_proj, "latents")
        depth = len({key.split(".")[1] for key in keys if key.startswith("layers.")})
        inner = shape(image_proj, "layers.0.0.to_q.weight")[0]
        return dict(kind="plus", feature="hidden", tokens=tokens,
                    encoder_width=shape(image_proj, "proj_in.weight")[1],
                    cross_attention_dim=shape(image_proj, "proj_out.weight")[0],
                    resampler_dim=dim, resampler_depth=depth, resampler_heads=inner // 64,
                    resampler_ff_mult=shape(image_proj, "layers.0.1.1.weight")[0] // dim)
    raise AdapterFileError(
        f"not an IP-Adapter projection: image_proj keys {sorted(keys)[:6]} match none of base "
        "(proj, norm), plus (latents, proj_in, layers...) or full-face (proj.0/2/3). Use an official "
        "h94/IP-Adapter file or one written by this extension's trainer.")


def _layer_widths(ip_layers: Mapping, cross_dim: int) -> tuple[tuple[int, int], ...]:
    """(N, inner width) for every layer; both to_k_ip and to_v_ip present, shaped [inner, cross_dim]."""
    found: dict[int, dict[str, tuple]] = {}
    for key in ip_layers:
        if is_lora_key(key):
            continue  # FaceID's embedded LoRA: faceid_format.lora_layers
        match = _LAYER_KEY.match(key)
        if match is None:
            raise AdapterFileError(f"unexpected key 'ip_adapter.{key}': an IP-Adapter file has only "
                                   "'N.to_k_ip.weight' and 'N.to_v_ip.weight' there")
        found.setdefault(int(match[1]), {})[match[2]] = shape(ip_layers, key)
    layers = []
    for n in sorted(found):
        shapes = found[n]
        if set(shapes) != {"k", "v"}:
            raise AdapterFileError(f"layer {n} has only to_{''.join(shapes)}_ip: the file is incomplete; "
                                   "download it again")
        if shapes["k"] != shapes["v"] or len(shapes["k"]) != 2 or shapes["k"][1] != cross_dim:
            raise AdapterFileError(
                f"layer {n}: to_k_ip {shapes['k']} / to_v_ip {shapes['v']} do not fit the projection's "
                f"cross-attention width {cross_dim}: the file is damaged or mixes two adapters")
        layers.append((n, shapes["k"][0]))
    return tuple(layers)


def _check_dtypes(image_proj: Mapping, ip_layers: Mapping) -> None:
    """Every weight a floating-point tensor (an integer or bool one would fail deep inside load_state_dict)."""
    for part, tensors in (("image_proj", image_proj), ("ip_adapter", ip_layers)):
        for key, value in tensors.items():
            dtype = getattr(value, "dtype", None)
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise AdapterFileError(f"'{part}.{key}' has dtype {dtype}: IP-Adapter weights are floating point "
                                       "(fp32, fp16 or bf16); the file is damaged or not an IP-Adapter")


def detect_spec(state_dict: Mapping, faceid_variant: str = "auto") -> AdapterSpec:
    """Read an adapter's spec from ``{"image_proj": {...}, "ip_adapter": {...}}`` (tensors or anything with
    ``.shape``, meta tensors included). ``faceid_variant`` decides what a FaceID file's contents cannot
    (faceid_format.py). Raises AdapterFileError with the fix."""
    if not isinstance(state_dict, Mapping) or not {"image_proj", "ip_adapter"} <= set(state_dict):
        raise AdapterFileError("not an IP-Adapter: expected the two parts 'image_proj' and 'ip_adapter' "
                               "(official h94/IP-Adapter layout)")
    image_proj, ip_layers = state_dict["image_proj"], state_dict["ip_adapter"]
    _check_dtypes(image_proj, ip_layers)
    dit_message = unsupported_dit_layout(image_proj, ip_layers)  # InstantX SD3.5 / FLUX.1-dev files (dit_spec.py)
    if dit_message:
        raise UnsupportedAdapterError(dit_message)
    if faceid_variant not in FACEID_VARIANTS:
        raise AdapterFileError(f"faceid_variant {faceid_variant!r} is not one of {', '.join(FACEID_VARIANTS)}")
    faceid = is_faceid(image_proj, ip_layers)
    if faceid:
        proj = faceid_projection_spec(image_proj, ip_layers, faceid_variant)
    elif faceid_variant != "auto":
        raise AdapterFileError(f"faceid_variant '{faceid_variant}' is for FaceID files; this is not one: set "
                               "faceid_variant to 'auto'")
    else:
        proj = _projection_spec(image_proj)
    layers = _layer_widths(ip_layers, proj["cross_attention_dim"])
    family = family_for_layers(n for n, _ in layers)
    if family is None:
        numbers = [n for n, _ in layers]
        raise AdapterFileError(
            f"the file has {len(layers)} cross-attention layers ({numbers[:4]}...); an SD1.5 adapter has 16 "
            "(1, 3, ..., 31) and an SDXL adapter 70 (1, 3, ..., 139): the file is incomplete or for another "
            "model")
    if faceid:
        rank, lora = lora_layers(ip_layers, dict(layers), proj["cross_attention_dim"])
        if lora and set(lora) != set(range(2 * len(layers))):
            raise AdapterFileError(f"the FaceID LoRA covers {len(lora)} attention layers; a complete one has "
                                   f"{2 * len(layers)} (0 ... {2 * len(layers) - 1}): the file is incomplete")
        proj.update(lora_rank=rank, lora_layers=lora)
    return AdapterSpec(family=family, layers=layers, **proj)
