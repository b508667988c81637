"""The XLabs Flux IP-Adapter family (docs/formats.md#flux-ip-adapters): its file layout, spec and modules; its
branches are added after each double block (``dit_attention.DiTBlockPatch``).

XLabs Flux IP-Adapter v1 / v2, one flat safetensors file:

- ``ip_adapter_proj_model.proj.weight [T*C, E]``, ``.proj.bias``, ``.norm.weight [C]``, ``.norm.bias``: the base
  projection (Linear, then LayerNorm per token) from CLIP ViT-L/14 ``image_embeds`` (E = 768) to T tokens of
  width C (4096); T = 4 (v1) or 16 (v2), read from the shapes;
- ``double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight [H, C], bias [H]}`` for the 19 double
  blocks i of the Flux transformer (H = 3072, the model's hidden width).

The modules below are named exactly as those keys and load strictly; nothing is renamed.
"""
import re
from typing import Mapping

import torch
from torch import nn

from .checks import shape
from .dit_attention import build_dit_branches
from .dit_spec import FLUX_DOUBLE_BLOCKS, DiTAdapterSpec
from .errors import AdapterFileError
from .family import DiTFamily
from .projection import ImageProjModel

XLABS_PROJ = "ip_adapter_proj_model."
_XLABS_BLOCK = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")
_XLABS_PROJ_KEYS = {f"{XLABS_PROJ}{name}" for name in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")}


def is_xlabs_layout(flat: Mapping) -> bool:
    return any(key.startswith(XLABS_PROJ) for key in flat)


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


def xlabs_spec(flat: Mapping) -> DiTAdapterSpec:
    """The spec of an XLabs Flux file, or AdapterFileError naming the key."""
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


def _branches(adapter, prompt, block_weights, sigma_range=None, *, schedule=None, mask=None, blocks=None, **host):
    return build_dit_branches(adapter, prompt, block_weights, sigma_range, schedule=schedule, mask=mask, **host)


FAMILY = DiTFamily(kind="xlabs_flux", title="XLabs Flux IP-Adapter", marks=is_xlabs_layout, claims=is_xlabs_layout,
                   spec=xlabs_spec, module=XLabsFluxAdapter, branches=_branches)
