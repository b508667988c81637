"""IP-Adapters for diffusion transformers (Flux), read from their own file layouts (docs/formats.md#flux-ip-adapters,
docs/formats.md#instantx-flux-ip-adapter).

XLabs Flux IP-Adapter v1 / v2, one flat safetensors file:

- ``ip_adapter_proj_model.proj.weight [T*C, E]``, ``.proj.bias``, ``.norm.weight [C]``, ``.norm.bias``: the base
  projection (Linear, then LayerNorm per token) from CLIP ViT-L/14 ``image_embeds`` (E = 768) to T tokens of
  width C (4096); T = 4 (v1) or 16 (v2), read from the shapes;
- ``double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight [H, C], bias [H]}`` for the 19 double
  blocks i of the Flux transformer (H = 3072, the model's hidden width).

InstantX FLUX.1-dev IP-Adapter, the h94 two parts (flattened here to ``image_proj.*`` / ``ip_adapter.*``):

- ``image_proj.proj.0 [M, E]`` (+ bias), ``proj.2 [T*C, M]`` (+ bias), ``norm [C]``: Linear, GELU, Linear, then
  LayerNorm per token, from SigLIP's pooled embedding (E = 1152, M = 2304) to T = 128 tokens of C = 4096;
- ``ip_adapter.N.to_{k,v}_ip.weight [H, C]`` (no bias) for N = 0 ... 56: the 19 double blocks, then the 38 single
  blocks, in run order. Its RMSNorms on K'/V' have no weights.

The modules below are named exactly as those keys and load strictly; nothing is renamed.
"""
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .checks import shape
from .errors import AdapterFileError, InputError
from .presets import parse_custom_entries
from .dit_sd3 import InstantXSD35Adapter, sd35_sizes
from .projection import FaceIDProjModel, ImageProjModel

XLABS_PROJ = "ip_adapter_proj_model."
_XLABS_BLOCK = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")
_XLABS_PROJ_KEYS = {f"{XLABS_PROJ}{name}" for name in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")}
FLUX_DOUBLE_BLOCKS = 19
FLUX_SINGLE_BLOCKS = 38
DIT_FAMILY_NAMES = {"flux": "Flux", "sd35": "SD3.5 Large"}
DIT_ENCODERS = {("pooled", 768): "CLIP ViT-L/14", ("hidden", 1152): "SigLIP so400m-384",
                ("pooled", 1152): "SigLIP so400m-384 (with its pooling head)"}
DIT_PRESETS = ("linear", "custom")  # the layer_weights presets that apply to DiT blocks
INSTANTX_FIRST_KEY = "ip_adapter.0.to_k_ip.weight"
_INSTANTX_PROJ = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
_INSTANTX_LAYER = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


@dataclass(frozen=True)
class DiTAdapterSpec:
    """What a DiT IP-Adapter file is. kind: "xlabs_flux", "instantx_flux" or "instantx_sd35". family: the
    transformer it is for ("flux", "sd35"). feature / encoder_width: which encoder output it reads and its width.
    tokens: image tokens per image. cross_attention_dim: the tokens' width. hidden: the transformer's width (rows
    of each K'/V' projection). double_blocks / single_blocks: the block indices that get an image branch."""
    kind: str
    family: str
    feature: str
    encoder_width: int
    tokens: int
    cross_attention_dim: int
    hidden: int
    double_blocks: tuple[int, ...]
    single_blocks: tuple[int, ...] = ()
    resampler_dim: int = 0  # instantx_sd35: the time-conditioned resampler's sizes
    resampler_depth: int = 0
    resampler_heads: int = 0
    time_dim: int = 0
    proj_hidden: int = 0  # instantx_flux: the inner width of its MLP projection

    @property
    def is_faceid(self) -> bool:  # read by the image prompts' pairing checks, as on AdapterSpec
        return False

    @property
    def encoder(self) -> str:
        return DIT_ENCODERS.get((self.feature, self.encoder_width),
                                f"a CLIP vision model with {self.feature} width {self.encoder_width}")

    @property
    def family_name(self) -> str:
        return DIT_FAMILY_NAMES[self.family]

    @property
    def describe(self) -> str:
        names = {"xlabs_flux": f"XLabs Flux IP-Adapter ({self.tokens} tokens)",
                 "instantx_flux": f"InstantX FLUX.1-dev IP-Adapter ({self.tokens} tokens)",
                 "instantx_sd35": f"InstantX SD3.5-Large IP-Adapter ({self.tokens} tokens)"}
        return f"{names[self.kind]} (needs {self.encoder})"

    @property
    def block_keys(self) -> tuple[tuple[str, int], ...]:
        """The host's ``patches_replace["dit"]`` keys of the blocks with an image branch, in run order."""
        return (tuple(("double_block", i) for i in self.double_blocks)
                + tuple(("single_block", i) for i in self.single_blocks))


def is_dit_layout(flat: Mapping) -> bool:
    """A flat file whose keys are one of the DiT IP-Adapter layouts (not the h94 ``image_proj.``/``ip_adapter.``)."""
    # h94 files number their layers from 1 (odd numbers); the InstantX layouts number every block from 0
    return any(key.startswith(XLABS_PROJ) for key in flat) or INSTANTX_FIRST_KEY in flat


def _xlabs_blocks(flat: Mapping, cross_dim: int) -> tuple[tuple[int, ...], int]:
    """The double-block indices and the hidden width, every block with k/v weight and bias of matching shapes."""
    found: dict[int, dict[str, tuple]] = {}
    for key in flat:
        if key.startswith(XLABS_PROJ):
            continue
        match = _XLABS_BLOCK.match(key)
        if match is None:
            raise AdapterFileError(f"unexpected key '{key}' in an XLabs Flux IP-Adapter file: it has only "
                                   "'ip_adapter_proj_model.*' and 'double_blocks.N.processor.ip_adapter_double_"
                                   "stream_{k,v}_proj.{weight,bias}'")
        found.setdefault(int(match[1]), {})[f"{match[2]}.{match[3]}"] = shape(flat, key)
    hidden = None
    for i in sorted(found):
        shapes = found[i]
        if set(shapes) != {"k.weight", "k.bias", "v.weight", "v.bias"}:
            missing = sorted({"k.weight", "k.bias", "v.weight", "v.bias"} - set(shapes))
            raise AdapterFileError(f"double block {i} lacks {', '.join(missing)}: the file is incomplete; "
                                   "download it again")
        hidden = hidden or shapes["k.weight"][0]
        wanted = {"k.weight": (hidden, cross_dim), "v.weight": (hidden, cross_dim), "k.bias": (hidden,),
                  "v.bias": (hidden,)}
        if shapes != wanted:
            raise AdapterFileError(f"double block {i}: k/v projections {shapes} do not fit tokens of width "
                                   f"{cross_dim} and a hidden width {hidden}: the file is damaged")
    blocks = tuple(sorted(found))
    if blocks != tuple(range(FLUX_DOUBLE_BLOCKS)):
        raise AdapterFileError(f"the file has IP weights for {len(blocks)} double blocks {list(blocks)[:4]}...; "
                               f"an XLabs Flux IP-Adapter has all {FLUX_DOUBLE_BLOCKS} (0 to 18): the file is "
                               "incomplete or for another model")
    return blocks, hidden


def _check_floats(flat: Mapping) -> None:
    for key, value in flat.items():
        dtype = getattr(value, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise AdapterFileError(f"'{key}' has dtype {dtype}: IP-Adapter weights are floating point "
                                   "(fp32, fp16 or bf16); the file is damaged or not an IP-Adapter")


def detect_dit_spec(flat: Mapping) -> DiTAdapterSpec:
    """The spec of a flat DiT IP-Adapter state dict (tensors or meta tensors), or AdapterFileError with the fix."""
    _check_floats(flat)
    if not any(key.startswith(XLABS_PROJ) for key in flat):
        if any(key.endswith(".norm_ip.linear.weight") for key in flat):
            return _sd35_spec(flat)
        return _instantx_flux_spec(flat)
    missing = sorted(_XLABS_PROJ_KEYS - set(flat))
    if missing:
        raise AdapterFileError(f"an XLabs Flux IP-Adapter file needs {', '.join(missing)}: the file is incomplete; "
                               "download it again")
    cross_dim = shape(flat, XLABS_PROJ + "norm.weight")[0]
    rows, embed = shape(flat, XLABS_PROJ + "proj.weight")
    if rows % cross_dim or shape(flat, XLABS_PROJ + "proj.bias") != (rows,):
        raise AdapterFileError(f"'{XLABS_PROJ}proj' [{rows}, {embed}] does not split into tokens of width "
                               f"{cross_dim}: the file is damaged")
    blocks, hidden = _xlabs_blocks(flat, cross_dim)
    return DiTAdapterSpec(kind="xlabs_flux", family="flux", feature="pooled", encoder_width=embed,
                          tokens=rows // cross_dim, cross_attention_dim=cross_dim, hidden=hidden,
                          double_blocks=blocks)


class _KVProjections(nn.Module):
    """One block's image K'/V' projections (with bias), named as the XLabs file names them."""

    def __init__(self, *, cross_attention_dim: int, hidden: int, operations=nn):
        super().__init__()
        self.ip_adapter_double_stream_k_proj = operations.Linear(cross_attention_dim, hidden, bias=True)
        self.ip_adapter_double_stream_v_proj = operations.Linear(cross_attention_dim, hidden, bias=True)


class _Processor(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.processor = _KVProjections(**kwargs)


class XLabsFluxAdapter(nn.Module):
    """``state_dict()`` keys equal the XLabs file's keys (module docstring)."""

    def __init__(self, spec: DiTAdapterSpec, operations=nn):
        super().__init__()
        self.spec = spec
        self.ip_adapter_proj_model = ImageProjModel(embed_dim=spec.encoder_width, tokens=spec.tokens,
                                                    cross_attention_dim=spec.cross_attention_dim,
                                                    operations=operations)
        self.double_blocks = nn.ModuleDict({
            str(i): _Processor(cross_attention_dim=spec.cross_attention_dim, hidden=spec.hidden,
                               operations=operations)
            for i in spec.double_blocks})

    def image_tokens(self, features: torch.Tensor, shortcut_weight: float = 1.0) -> torch.Tensor:
        """(n, E) pooled embeds -> (n, T, C) tokens (``shortcut_weight`` is FaceID Plus v2's: unused here)."""
        return self.ip_adapter_proj_model(features)

    def block_keys_values(self, tokens: torch.Tensor, blocks=None) -> dict:
        """Tokens (P, N, C) -> {("double_block", i): (K' (P, N, H), V' (P, N, H))}, every block or those in
        ``blocks``."""
        out = {}
        for i, block in self.double_blocks.items():
            key = ("double_block", int(i))
            if blocks is None or key in blocks:
                proj = block.processor
                out[key] = (proj.ip_adapter_double_stream_k_proj(tokens), proj.ip_adapter_double_stream_v_proj(tokens))
        return out


def _sd35_spec(flat: Mapping) -> DiTAdapterSpec:
    parts = _parts(flat, "InstantX SD3.5 IP-Adapter")
    sizes = sd35_sizes(parts["image_proj"], parts["ip_adapter"])
    return DiTAdapterSpec(kind="instantx_sd35", family="sd35", feature="hidden", **sizes)


def _parts(flat: Mapping, name: str) -> dict[str, dict]:
    parts = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        if part not in parts:
            raise AdapterFileError(f"unexpected key '{key}' in an {name} file: it has only 'image_proj.*' and "
                                   "'ip_adapter.*'")
        parts[part][rest] = value
    return parts


def _instantx_flux_spec(flat: Mapping) -> DiTAdapterSpec:
    """InstantX FLUX.1-dev: the MLP projection's sizes from its shapes, K'/V' [H, C] on blocks 0 ... 56."""
    name = "InstantX FLUX.1-dev IP-Adapter"
    parts = _parts(flat, name)
    proj, layers = parts["image_proj"], parts["ip_adapter"]
    if set(proj) != set(_INSTANTX_PROJ):
        missing, extra = sorted(set(_INSTANTX_PROJ) - set(proj)), sorted(set(proj) - set(_INSTANTX_PROJ))
        raise AdapterFileError(f"an {name} file has image_proj.{{{', '.join(_INSTANTX_PROJ)}}}; this one "
                               f"{'lacks ' + ', '.join(missing) if missing else 'has ' + ', '.join(extra)}: the "
                               "file is incomplete or not this adapter")
    inner, embed = shape(proj, "proj.0.weight")
    rows = shape(proj, "proj.2.weight")[0]
    width = shape(proj, "norm.weight")[0]
    wanted = {"proj.0.bias": (inner,), "proj.2.weight": (rows, inner), "proj.2.bias": (rows,),
              "norm.bias": (width,)}
    wrong = [key for key, want in wanted.items() if shape(proj, key) != want]
    if wrong or rows % width:
        raise AdapterFileError(f"image_proj.{(wrong or ['proj.2.weight'])[0]} does not fit an MLP from {embed} "
                               f"to tokens of width {width}: the file is damaged")
    blocks: dict[int, set] = {}
    for key in layers:
        match = _INSTANTX_LAYER.match(key)
        if match is None:
            raise AdapterFileError(f"unexpected key 'ip_adapter.{key}' in an {name} file: it has only "
                                   "'ip_adapter.N.to_{k,v}_ip.weight'")
        blocks.setdefault(int(match[1]), set()).add(match[2])
    total = FLUX_DOUBLE_BLOCKS + FLUX_SINGLE_BLOCKS
    if sorted(blocks) != list(range(total)) or any(kv != {"k", "v"} for kv in blocks.values()):
        incomplete = [n for n in range(total) if blocks.get(n) != {"k", "v"}]
        raise AdapterFileError(f"the file has K'/V' for {len(blocks)} blocks (incomplete or missing: "
                               f"{incomplete[:4]}); an {name} has both on all {total} (19 double + 38 single "
                               "blocks): the file is incomplete or for another model")
    hidden = shape(layers, "0.to_k_ip.weight")[0]
    odd = [key for key in layers if shape(layers, key) != (hidden, width)]
    if odd:
        raise AdapterFileError(f"ip_adapter.{odd[0]} is {list(shape(layers, odd[0]))}, not [{hidden}, {width}] "
                               "as the other blocks': the file is damaged")
    return DiTAdapterSpec(kind="instantx_flux", family="flux", feature="pooled", encoder_width=embed,
                          tokens=rows // width, cross_attention_dim=width, hidden=hidden,
                          double_blocks=tuple(range(FLUX_DOUBLE_BLOCKS)),
                          single_blocks=tuple(range(FLUX_SINGLE_BLOCKS)), proj_hidden=inner)


class _InstantXKV(nn.Module):
    """One block's image K'/V' projections (no bias), named as the InstantX file names them."""

    def __init__(self, cross_attention_dim: int, hidden: int, operations=nn):
        super().__init__()
        self.to_k_ip = operations.Linear(cross_attention_dim, hidden, bias=False)
        self.to_v_ip = operations.Linear(cross_attention_dim, hidden, bias=False)


KV_NORM_EPS = 1e-5  # the InstantX processor's RMSNorms on K' and V' (no weights)
PROJ_ROWS = 32768  # rows of the InstantX projection's last Linear cast at a time (32768 x 2304: 302 MB in fp32)


def head_rms_norm(x: torch.Tensor, head_dim: int, eps: float = KV_NORM_EPS) -> torch.Tensor:
    """RMSNorm over each head's d channels of (..., h*d), computed in fp32, in x's dtype."""
    heads = rearrange(x.float(), "... (h d) -> ... h d", d=head_dim)
    heads = heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + eps)
    return rearrange(heads, "... h d -> ... (h d)").to(x.dtype)


class InstantXFluxAdapter(nn.Module):
    """``state_dict()`` keys equal the InstantX file's flattened keys (module docstring); block N of the file is
    double block N for N < 19, else single block N - 19."""

    def __init__(self, spec: DiTAdapterSpec, operations=nn):
        super().__init__()
        self.spec = spec
        self.image_proj = FaceIDProjModel(embed_dim=spec.encoder_width, hidden_dim=spec.proj_hidden,
                                          cross_attention_dim=spec.cross_attention_dim, tokens=spec.tokens,
                                          operations=operations)
        self.ip_adapter = nn.ModuleDict({str(n): _InstantXKV(spec.cross_attention_dim, spec.hidden, operations)
                                         for n in range(len(spec.block_keys))})

    def image_tokens(self, features: torch.Tensor, shortcut_weight: float = 1.0) -> torch.Tensor:
        """(n, E) pooled SigLIP embeddings -> (n, T, C) tokens (``shortcut_weight``: unused here). The last Linear
        (T*C = 524288 rows, 1.2 B weights) is applied a block of rows at a time, so that casting its weights to
        the features' dtype never copies more than ``PROJ_ROWS`` rows of it."""
        proj = self.image_proj
        inner = proj.proj[1](proj.proj[0](features))  # (n, M)
        last = proj.proj[2]
        rows = [F.linear(inner, last.weight[i:i + PROJ_ROWS].to(inner),
                         None if last.bias is None else last.bias[i:i + PROJ_ROWS].to(inner))
                for i in range(0, last.weight.shape[0], PROJ_ROWS)]
        x = rearrange(torch.cat(rows, dim=-1), "b (n c) -> b n c", n=self.spec.tokens)  # (n, T, C)
        return proj.norm(x)

    def block_keys_values(self, tokens: torch.Tensor, blocks=None, head_dim: int = 128) -> dict:
        """Tokens (P, N, C) -> {block key: (K' (P, N, H), V' (P, N, H))}, each RMS-normed per head of
        ``head_dim`` channels (FLUX.1: 24 heads of 128), every block or those in ``blocks``."""
        out = {}
        for n, key in enumerate(self.spec.block_keys):
            if blocks is None or key in blocks:
                layer = self.ip_adapter[str(n)]
                out[key] = (head_rms_norm(layer.to_k_ip(tokens), head_dim),
                            head_rms_norm(layer.to_v_ip(tokens), head_dim))
        return out


_ADAPTERS = {"xlabs_flux": XLabsFluxAdapter, "instantx_flux": InstantXFluxAdapter,
             "instantx_sd35": InstantXSD35Adapter}


def build_dit_adapter(flat: Mapping, operations=nn) -> nn.Module:
    """Detect the spec, build on the meta device and load strictly (tensors are taken, not copied)."""
    spec = detect_dit_spec(flat)
    with torch.device("meta"):
        model = _ADAPTERS[spec.kind](spec, operations)
    model.load_state_dict(dict(flat), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def dit_block_weights(spec, preset: str, weight: float, custom: str = "") -> dict[tuple[str, int], float]:
    """{block key: weight}: ``linear`` gives every block ``weight``; ``custom`` one multiplier per block in run
    order (19 numbers for XLabs Flux, 57 for InstantX FLUX.1-dev: double blocks, then single), or ``name=value``
    entries with names like ``double 3``, ``single 12``."""
    keys = spec.block_keys
    if preset == "linear":
        return {key: weight for key in keys if weight != 0.0}
    if preset != "custom":
        raise InputError(f"layer_weights: '{preset}' is a preset of SD1.5/SDXL UNet layers; for a "
                         f"{spec.family_name} IP-Adapter use {' or '.join(DIT_PRESETS)}")
    names = {f"{kind.split('_')[0]} {i}": (kind, i) for kind, i in keys}
    values = parse_custom_entries(
        custom, keys, lambda name: [names[name]] if name in names else [], separators=",;\n", error=InputError,
        count=lambda given: (f"custom_layer_weights: {given} numbers for {len(keys)} blocks: give one per block "
                             f"({len(keys)}), or entries like 'double 0=1.0, double 5=0.5'"),
        unknown=lambda name: (f"custom_layer_weights: '{name}' is not a block of this adapter: name blocks "
                              f"{_block_names(spec)}"))
    return {key: weight * w for key, w in values.items() if weight * w != 0.0}


def _block_names(spec) -> str:
    names = f"'double 0' ... 'double {len(spec.double_blocks) - 1}'"
    return names + (f" and 'single 0' ... 'single {len(spec.single_blocks) - 1}'" if spec.single_blocks else "")


def unsupported_dit_layout(image_proj: Mapping, ip_layers: Mapping) -> str | None:
    """What a nested (``image_proj`` / ``ip_adapter``) file is when it is one of the DiT adapters this extension
    recognises but does not run, as the refusal's message; None for anything else
    (docs/formats.md#dit-files-in-the-h94-reader).

    InstantX SD3.5-Large: per-block ``N.norm_ip.linear.*`` (the AdaLN of the image tokens) and a resampler with
    ``time_embedding.*`` (supported: loaded through the DiT path; only a torch file that cannot be peeked at
    lazily ends up here). InstantX FLUX.1-dev: ``N.to_{k,v}_ip.weight`` from block N = 0 (h94 files number only
    cross-attention layers, all odd): supported through the DiT path; named here when the h94 reader gets it."""
    if any(k.endswith(".norm_ip.linear.weight") for k in ip_layers) or "time_embedding.linear_1.weight" in image_proj:
        return ("this is the InstantX SD3.5-Large IP-Adapter in a torch file that cannot be opened lazily (an old "
                "torch.save format): save it again as .safetensors (keys 'image_proj.*', 'ip_adapter.*')")
    if "0.to_k_ip.weight" in ip_layers:  # h94 files number their layers from 1
        return ("this is the InstantX FLUX.1-dev IP-Adapter, a Flux adapter: load it with Load IP-Adapter and "
                "apply it to a Flux model (the SD1.5/SDXL presets and layer tables do not take it)")
    return None
