"""The InstantX FLUX.1-dev IP-Adapter family (docs/formats.md#instantx-flux-ip-adapter): its file layout, spec and
modules; its branches are added to the joint attention of every double and single block
(``dit_attention.InstantXFluxPatch``).

InstantX FLUX.1-dev IP-Adapter, the h94 two parts (flattened here to ``image_proj.*`` / ``ip_adapter.*``):

- ``image_proj.proj.0 [M, E]`` (+ bias), ``proj.2 [T*C, M]`` (+ bias), ``norm [C]``: Linear, GELU, Linear, then
  LayerNorm per token, from SigLIP's pooled embedding (E = 1152, M = 2304) to T = 128 tokens of C = 4096;
- ``ip_adapter.N.to_{k,v}_ip.weight [H, C]`` (no bias) for N = 0 ... 56: the 19 double blocks, then the 38 single
  blocks, in run order. Its RMSNorms on K'/V' have no weights.

The modules below are named exactly as those keys and load strictly; nothing is renamed.
"""
import re
from typing import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .checks import shape
from .dit_attention import build_dit_branches
from .dit_spec import FLUX_DOUBLE_BLOCKS, FLUX_SINGLE_BLOCKS, INSTANTX_FIRST_KEY, DiTAdapterSpec, file_parts
from .errors import AdapterFileError
from .family import DiTFamily
from .projection import FaceIDProjModel

_INSTANTX_PROJ = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
_INSTANTX_LAYER = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


def instantx_flux_spec(flat: Mapping) -> DiTAdapterSpec:
    """InstantX FLUX.1-dev: the MLP projection's sizes from its shapes, K'/V' [H, C] on blocks 0 ... 56."""
    name = "InstantX FLUX.1-dev IP-Adapter"
    parts = file_parts(flat, name)
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


def _branches(adapter, prompt, block_weights, sigma_range=None, *, schedule=None, mask=None, blocks=None, **host):
    return build_dit_branches(adapter, prompt, block_weights, sigma_range, schedule=schedule, mask=mask, **host)


FAMILY = DiTFamily(kind="instantx_flux", title="InstantX FLUX.1-dev IP-Adapter",
                   marks=lambda flat: INSTANTX_FIRST_KEY in flat, claims=lambda flat: True,  # after the others
                   spec=instantx_flux_spec, module=InstantXFluxAdapter, branches=_branches)
