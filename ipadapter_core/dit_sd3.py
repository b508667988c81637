"""The InstantX SD3.5-Large IP-Adapter: its file layout, modules and the per-block image attention
(docs/formats.md#sd35-ip-adapter, docs/inference.md#sd35); its entry in the family registry is ``instantx_sd35.py``.

File: the h94 two parts. ``image_proj``: a resampler over SigLIP so400m hidden states (729 x 1152) with a timestep
embedding (``time_embedding.linear_{1,2}``), ``latents [1, 64, D]``, ``proj_in``, ``proj_out [C, D]``, ``norm_out``
and per layer i ``layers.i.0.{norm1, norm2, to_q, to_kv, to_out}`` (attention), ``layers.i.1.{0, 1, 3}`` (LayerNorm,
feed-forward), ``layers.i.2.1`` (the AdaLN projection of the timestep embedding to shift/scale of both).
``ip_adapter``: per joint block N = 0 ... 37 ``N.norm_ip.linear.{weight, bias}`` (AdaLN of the image tokens),
``N.to_{k,v}_ip.weight [H, C]`` and the RMSNorms ``N.norm_{q, k, ip_k}.weight [d]``.
"""
import math
import re
from typing import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .checks import shape
from .errors import AdapterFileError

SD35_BLOCKS = 38
HEAD_DIM = 64
_MISSING = ("an InstantX SD3.5 IP-Adapter needs 'image_proj.{key}': the file is incomplete; download it "
            "again")
_BLOCK_KEY = re.compile(r"^(\d+)\.(norm_ip\.linear\.weight|norm_ip\.linear\.bias|to_k_ip\.weight|to_v_ip\.weight|"
                        r"norm_q\.weight|norm_k\.weight|norm_ip_k\.weight)$")


def is_sd35_layout(ip_layers: Mapping) -> bool:
    return any(key.endswith(".norm_ip.linear.weight") for key in ip_layers)


def sd35_sizes(image_proj: Mapping, ip_layers: Mapping) -> dict:
    """The spec fields of an InstantX SD3.5 file from its keys and shapes, or AdapterFileError naming the key."""
    _, tokens, dim = shape(image_proj, "latents", _MISSING)
    depth = len({key.split(".")[1] for key in image_proj if key.startswith("layers.")})
    blocks: dict[int, set] = {}
    for key in ip_layers:
        match = _BLOCK_KEY.match(key)
        if match is None:
            raise AdapterFileError(f"unexpected key 'ip_adapter.{key}' in an InstantX SD3.5 IP-Adapter file")
        blocks.setdefault(int(match[1]), set()).add(match[2])
    numbers = tuple(sorted(blocks))
    if numbers != tuple(range(SD35_BLOCKS)) or any(len(names) != 7 for names in blocks.values()):
        incomplete = [n for n in numbers if len(blocks[n]) != 7]
        raise AdapterFileError(f"the file has IP weights for {len(numbers)} joint blocks (incomplete: "
                               f"{incomplete[:4]}); an InstantX SD3.5-Large IP-Adapter has all {SD35_BLOCKS} with 7 "
                               "tensors each: the file is incomplete; download it again")
    return dict(encoder_width=shape(image_proj, "proj_in.weight", _MISSING)[1], tokens=tokens,
                cross_attention_dim=shape(image_proj, "proj_out.weight", _MISSING)[0],
                hidden=tuple(ip_layers["0.to_k_ip.weight"].shape)[0], double_blocks=numbers,
                resampler_dim=dim, resampler_depth=depth,
                resampler_heads=shape(image_proj, "layers.0.0.to_q.weight", _MISSING)[0] // HEAD_DIM,
                time_dim=shape(image_proj, "time_embedding.linear_1.weight", _MISSING)[1])


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis, in fp32 (the reference's RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight.to(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, operations):
        super().__init__()
        inner = heads * HEAD_DIM
        self.norm1 = operations.LayerNorm(dim)
        self.norm2 = operations.LayerNorm(dim)
        self.to_q = operations.Linear(dim, inner, bias=False)
        self.to_kv = operations.Linear(dim, 2 * inner, bias=False)
        self.to_out = operations.Linear(inner, dim, bias=False)


class _TimeEmbedding(nn.Module):
    def __init__(self, time_dim: int, dim: int, operations):
        super().__init__()
        self.linear_1 = operations.Linear(time_dim, dim)
        self.linear_2 = operations.Linear(dim, dim)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) timesteps -> (B, dim): cos then sin of t * 10000^(-i / (dim/2)), i = 0 ... dim/2 - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, N, D) with (B, D)


class TimeResampler(nn.Module):
    """The timestep-conditioned resampler: hidden states (B, P, W) and timesteps (B,) -> tokens (B, N, C) and the
    timestep embedding (B, D) the blocks' AdaLN of the tokens reads."""

    def __init__(self, *, embedding_dim: int, dim: int, output_dim: int, depth: int, heads: int, tokens: int,
                 time_dim: int, ff_mult: int = 4, operations=nn):
        super().__init__()
        self.time_dim = time_dim
        self.latents = nn.Parameter(torch.randn(1, tokens, dim) / dim ** 0.5)
        self.proj_in = operations.Linear(embedding_dim, dim)
        self.proj_out = operations.Linear(dim, output_dim)
        self.norm_out = operations.LayerNorm(output_dim)
        self.time_embedding = _TimeEmbedding(time_dim, dim, operations)
        self.layers = nn.ModuleList(nn.ModuleList([
            _Attention(dim, heads, operations),
            nn.Sequential(operations.LayerNorm(dim), operations.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                          operations.Linear(dim * ff_mult, dim, bias=False)),
            nn.Sequential(nn.SiLU(), operations.Linear(dim, 4 * dim)),
        ]) for _ in range(depth))

    def _attend(self, attn: _Attention, x, latents, shift, scale):
        x = attn.norm1(x)  # (B, P, D)
        latents = _modulate(attn.norm2(latents), shift, scale)  # (B, N, D)
        q = attn.to_q(latents)
        k, v = attn.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)  # (B, P+N, h*d) each
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", d=HEAD_DIM) for t in (q, k, v))
        s = 1 / math.sqrt(math.sqrt(HEAD_DIM))
        weight = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), dim=-1).type(q.dtype)  # (B, h, N, P+N)
        return attn.to_out(rearrange(weight @ v, "b h n d -> b n (h d)"))

    def forward(self, hidden: torch.Tensor, timesteps: torch.Tensor):
        emb = self.time_embedding
        temb = emb.linear_2(F.silu(emb.linear_1(sinusoidal(timesteps, self.time_dim).to(hidden))))  # (B, D)
        latents = self.latents.to(hidden).expand(hidden.shape[0], -1, -1)  # (B, N, D)
        x = self.proj_in(hidden) + temb[:, None]  # (B, P, D)
        for attn, ff, adaln in self.layers:
            shift_msa, scale_msa, shift_mlp, scale_mlp = adaln(temb).chunk(4, dim=1)  # (B, D) each
            latents = self._attend(attn, x, latents, shift_msa, scale_msa) + latents
            latents = ff[1:](_modulate(ff[0](latents), shift_mlp, scale_mlp)) + latents
        return self.norm_out(self.proj_out(latents)), temb


class _NormIP(nn.Module):
    def __init__(self, time_dim: int, width: int, operations):
        super().__init__()
        self.linear = operations.Linear(time_dim, 2 * width)


class SD35Block(nn.Module):
    """One joint block's image-branch weights, named as the file names them."""

    def __init__(self, *, time_dim: int, width: int, hidden: int, operations=nn):
        super().__init__()
        self.norm_ip = _NormIP(time_dim, width, operations)
        self.to_k_ip = operations.Linear(width, hidden, bias=False)
        self.to_v_ip = operations.Linear(width, hidden, bias=False)
        self.norm_q, self.norm_k, self.norm_ip_k = RMSNorm(HEAD_DIM), RMSNorm(HEAD_DIM), RMSNorm(HEAD_DIM)

    def keys_values(self, tokens: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, C) and the timestep embedding (B, D) -> K' (RMS-normed), V': (B, h, N, d)."""
        shift, scale = self.norm_ip.linear(F.silu(temb)).chunk(2, dim=1)  # (B, C) each: shift first
        normed = _modulate(F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6), shift, scale)
        k, v = (rearrange(proj(normed), "b n (h d) -> b h n d", d=HEAD_DIM) for proj in (self.to_k_ip, self.to_v_ip))
        return self.norm_ip_k(k), v


def sd35_image_attention(block: SD35Block, q, k, v, k_ip, v_ip) -> torch.Tensor:
    """The reference's image branch: SDPA(norm_q(q), [norm_k(k); K'], [v; V']) with the latent tokens' own
    (un-normed) q, k, v (B, h, L, d) -> (B, L, h*d)."""
    keys = torch.cat([block.norm_k(k), k_ip], dim=2)  # (B, h, L+N, d)
    values = torch.cat([v, v_ip], dim=2)
    out = F.scaled_dot_product_attention(block.norm_q(q), keys, values)  # (B, h, L, d)
    return rearrange(out, "b h l d -> b l (h d)")


class InstantXSD35Adapter(nn.Module):
    """``state_dict()`` keys are the file's ``image_proj.*`` and ``ip_adapter.N.*`` (module docstring)."""

    def __init__(self, spec, operations=nn):
        super().__init__()
        self.spec = spec
        self.image_proj = TimeResampler(embedding_dim=spec.encoder_width, dim=spec.resampler_dim,
                                        output_dim=spec.cross_attention_dim, depth=spec.resampler_depth,
                                        heads=spec.resampler_heads, tokens=spec.tokens, time_dim=spec.time_dim,
                                        operations=operations)
        self.ip_adapter = nn.ModuleDict({
            str(i): SD35Block(time_dim=spec.resampler_dim, width=spec.cross_attention_dim, hidden=spec.hidden,
                              operations=operations)
            for i in spec.double_blocks})

    def image_tokens(self, features: torch.Tensor, shortcut_weight: float = 1.0) -> torch.Tensor:
        """Hidden states pass through unchanged: the resampler needs the step's timestep, so it runs at each call
        (``shortcut_weight`` is FaceID Plus v2's: unused here)."""
        return features


def sd35_query_key(joint_block, x: torch.Tensor, c: torch.Tensor, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """A joint block's image-token query and key before its own q/k norms: (B, h, L, d) each (``weights`` reads a
    Linear's weight and bias as its forward would)."""
    x_block = joint_block.x_block
    chunks = 9 if getattr(x_block, "x_block_self_attn", False) else 6
    shift, scale = x_block.adaLN_modulation(c).chunk(chunks, dim=1)[:2]  # (B, H) each
    xm = _modulate(x_block.norm1(x), shift, scale)  # (B, L, H)
    weight, bias = weights(x_block.attn.qkv, xm)  # rows: q, k, v, each H
    rows = 2 * x.shape[-1]
    qk = F.linear(xm, weight[:rows], None if bias is None else bias[:rows])  # (B, L, 2*h*d)
    q, k = rearrange(qk, "b l (two h d) -> two b h l d", two=2, d=HEAD_DIM)
    return q, k


class StepTokens:
    """The image tokens of one SD3.5 adapter application at the current model call: the resampler runs once per
    call (its tokens depend on the timestep) and every block of the application reads the result. A cache, not
    state; shared by ``copy.deepcopy`` (the host's clone)."""

    def __init__(self, adapter: InstantXSD35Adapter, cond: torch.Tensor, uncond: torch.Tensor, timestep_of):
        self.adapter, self.cond, self.uncond, self.timestep_of = adapter, cond, uncond, timestep_of
        self._call = None  # (sigmas tensor, rows, device, dtype, tokens, temb)

    def __deepcopy__(self, memo):
        return self

    def get(self, sigmas: torch.Tensor, rows, chunk_rows, device, dtype):
        """(tokens (B, n*N, C), temb (B, D)) for the call's rows; the n images' tokens side by side."""
        call = self._call
        if call is not None and call[0] is sigmas and call[1:4] == (rows, device, dtype):
            return call[4], call[5]
        images = self.cond.shape[0]
        features = chunk_rows(self.cond[None], self.uncond[None], rows)  # (B, n, P, W)
        features = rearrange(features, "b i p w -> (b i) p w").to(device=device, dtype=dtype)
        timesteps = self.timestep_of(sigmas).to(device).repeat_interleave(images)  # (B*n,)
        tokens, temb = self.adapter.image_proj(features, timesteps)
        tokens = rearrange(tokens, "(b i) n c -> b (i n) c", i=images)
        temb = temb[::images]
        self._call = (sigmas, rows, device, dtype, tokens, temb)
        return tokens, temb


def norm_ratio(model_norm, adapter_norm: RMSNorm) -> torch.Tensor | None:
    """(d,) factor turning the model's RMS-normed q or k into the adapter's: both normalise the same raw vector
    with the same eps and differ only in their weights, so adapter(x) = model(x) * (w_adapter / w_model). None when
    that does not hold (another norm, another eps, a zero weight): the raw q/k are then recomputed."""
    weight = getattr(model_norm, "weight", None)
    if weight is None or getattr(model_norm, "eps", None) != adapter_norm.eps or getattr(weight, "is_meta", False):
        return None
    weight = weight.detach().float().cpu()
    if weight.shape != adapter_norm.weight.shape or not bool((weight != 0).all()):
        return None
    return adapter_norm.weight.detach().float().cpu() / weight
