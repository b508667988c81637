"""The decoupled cross-attention: out = Attn(Q, K, V) + weight * Attn(Q, K', V').

``IPAttentionPatch`` follows the host's attn2-replace protocol (``__call__(q, k, v, extra_options)``, ``to``,
``models``) but is plain torch: the attention function is injected. Everything it needs (K'/V' of the image tokens,
weight, sigma range) is resolved before sampling; the call only selects rows, attends and adds.
"""
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange

from .adapter import IPAdapterModel
from .image_prompt import ImagePrompt


def sdpa_attention(q, k, v, heads, mask=None, attn_precision=None, **kwargs):
    """Default attention, with the host's signature: (B, L, h*d) in and out."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, L, d)
    return rearrange(out, "b h n d -> b n (h d)")


@dataclass(frozen=True)
class Branch:
    """One adapter's contribution to one layer. Tensors are (P, N, inner): P = 1 (every latent row attends to the
    same N tokens, e.g. several images' tokens concatenated) or P per-row token sets (row i of each cond/uncond
    chunk reads set i; a chunk with more rows than sets repeats the last set, one with fewer uses the first)."""
    k_cond: torch.Tensor
    v_cond: torch.Tensor
    k_uncond: torch.Tensor
    v_uncond: torch.Tensor
    weight: float
    sigma_range: tuple[float, float] | None = None  # (sigma at start, sigma at end); None: every step
    schedule: tuple[torch.Tensor, torch.Tensor] | None = None  # (sigmas (K,) descending, multipliers (K,))
    mask: torch.Tensor | None = None  # (M, H, W) in [0, 1], any resolution: where the branch acts

    def to(self, device=None, dtype=None) -> "Branch":
        moved = (t.to(device=device, dtype=dtype) for t in (self.k_cond, self.v_cond, self.k_uncond, self.v_uncond))
        schedule = None if self.schedule is None else tuple(t.to(device) for t in self.schedule)
        mask = None if self.mask is None else self.mask.to(device=device, dtype=dtype)
        return Branch(*moved, weight=self.weight, sigma_range=self.sigma_range, schedule=schedule, mask=mask)


@torch.no_grad()
def build_branches(adapter: IPAdapterModel, prompt: ImagePrompt, weight: float,
                   sigma_range: tuple[float, float] | None = None, unfold: bool = False, *,
                   layer_weights: Mapping[int, float] | None = None,
                   schedule: tuple[torch.Tensor, torch.Tensor] | None = None,
                   mask: torch.Tensor | None = None) -> dict[int, Branch]:
    """Project the prompt's images to tokens once and compute K'/V' for cond and uncond rows of every layer the
    adapter acts on (``layer_weights``: {N: weight}, default ``weight`` on every layer; layers left out get none).

    Several reference images: their tokens are concatenated (one longer image prompt), or with ``unfold`` image i
    conditions latent row i (animation frames)."""
    prompt.check_fits(adapter.spec)
    param = next(adapter.parameters())
    cond, uncond = prompt.features(adapter.spec.feature)
    features = torch.cat([cond, uncond]).to(device=param.device, dtype=torch.float32)  # (2n, ...)
    tokens = adapter.image_tokens(features)  # (2n, N, C)
    if unfold:
        tokens = rearrange(tokens, "(u i) n c -> u i n c", u=2)  # (2, n, N, C): cond, uncond
    else:
        tokens = rearrange(tokens, "(u i) n c -> u 1 (i n) c", u=2)  # (2, 1, n*N, C): cond, uncond
    weights = {n: weight for n, _ in adapter.spec.layers} if layer_weights is None else dict(layer_weights)
    branches = branches_from_tokens(adapter, tokens[0], tokens[1], weight, sigma_range, layers=weights)
    extra = dict(schedule=schedule, mask=None if mask is None else mask.detach().float().cpu())
    return {n: replace(b, weight=weights[n], **extra) for n, b in branches.items()}


def branches_from_tokens(adapter: IPAdapterModel, cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor,
                         weight: float, sigma_range: tuple[float, float] | None = None,
                         layers=None) -> dict[int, Branch]:
    """Tokens (P, N, C) for cond and uncond rows -> {layer N: Branch}, for every layer or those in ``layers``.
    Differentiable (training uses it, passing one tensor for both: its keys/values are then computed once)."""
    kv_cond = adapter.layer_keys_values(cond_tokens, layers)
    kv_uncond = kv_cond if uncond_tokens is cond_tokens else adapter.layer_keys_values(uncond_tokens, layers)
    return {n: Branch(*kv_cond[n], *kv_uncond[n], weight=weight, sigma_range=sigma_range) for n in kv_cond}


def _fit(t: torch.Tensor, rows: int) -> torch.Tensor:
    """(P, N, D) -> (rows, N, D): broadcast one set, or one set per row (last repeated / extra sets dropped)."""
    sets = t.shape[0]
    if sets == 1:
        return t.expand(rows, -1, -1)
    if sets >= rows:
        return t[:rows]
    return torch.cat([t, t[-1:].expand(rows - sets, -1, -1)])


def _rows(cond: torch.Tensor, uncond: torch.Tensor, cond_or_uncond, batch: int) -> torch.Tensor:
    """(P, N, D) cond/uncond tensors -> (B, N, D), one chunk of rows per entry of cond_or_uncond (1 = uncond)."""
    chunks = list(cond_or_uncond) or [0]
    per, rest = divmod(batch, len(chunks))
    if rest:
        raise ValueError(f"batch of {batch} rows does not split into {len(chunks)} cond/uncond chunks")
    if len(chunks) == 1:
        return _fit(uncond if chunks[0] == 1 else cond, per)
    return torch.cat([_fit(uncond if c == 1 else cond, per) for c in chunks])  # (B, N, D)


class IPAttentionPatch:
    """attn2 replacement for one layer: the layer's own attention (or the patch that was there before) plus
    one decoupled image branch per stacked adapter. Immutable once built: stacking makes a new object, and
    ``copy.deepcopy`` (the host's ``ModelPatcher.clone``) returns the same object instead of copying tensors."""

    def __init__(self, branches: tuple[Branch, ...], attention: Callable = sdpa_attention, inner=None):
        self.branches = tuple(branches)
        self.attention = attention
        self.inner = inner  # a previous attn2 replacement of another extension, or None
        self._placed_key = None  # (device, dtype) of the copy below: a cache, not state
        self._placed: tuple[Branch, ...] = ()
        self._masks: dict = {}

    def stacked(self, branch: Branch) -> "IPAttentionPatch":
        return IPAttentionPatch(self.branches + (branch,), self.attention, self.inner)

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        """Host protocol: pre-place the image keys/values where the model runs. Returns self."""
        if self.branches:
            device, dtype = self._placed_key or (self.branches[0].k_cond.device, torch.float32)
            if isinstance(device_or_dtype, torch.dtype):
                dtype = device_or_dtype
            else:
                device = torch.device(device_or_dtype)
            self._place(device, dtype)
        if hasattr(self.inner, "to"):
            self.inner = self.inner.to(device_or_dtype)
        return self

    def models(self):
        return self.inner.models() if hasattr(self.inner, "models") else []

    def _place(self, device, dtype) -> tuple[Branch, ...]:
        self._placed = tuple(b.to(device=device, dtype=dtype) for b in self.branches)
        self._placed_key = (device, dtype)
        self._masks = {}
        return self._placed

    def _layer_mask(self, branch: Branch, tokens: int, original_shape) -> torch.Tensor:
        """The branch's mask on this layer's grid, resized once per latent size (a cache, not state)."""
        key = (id(branch), tokens, None if original_shape is None else tuple(original_shape[-2:]))
        if key not in self._masks:
            self._masks[key] = layer_mask(branch.mask, tokens, original_shape)
        return self._masks[key]

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        if self.inner is not None:
            out = self.inner(q, k, v, extra_options)
        else:
            out = self.attention(q, k, v, heads, attn_precision=precision, transformer_options=extra_options)
        placed = self._placed if self._placed_key == (q.device, q.dtype) else self._place(q.device, q.dtype)
        cond_or_uncond = extra_options.get("cond_or_uncond", [0])
        sigmas = extra_options.get("sigmas")
        for branch in placed:
            k_ip = _rows(branch.k_cond, branch.k_uncond, cond_or_uncond, q.shape[0])  # (B, N, inner)
            v_ip = _rows(branch.v_cond, branch.v_uncond, cond_or_uncond, q.shape[0])
            ip = self.attention(q, k_ip, v_ip, heads, attn_precision=precision, transformer_options=extra_options)
            if branch.mask is not None:
                mask = self._layer_mask(branch, q.shape[1], extra_options.get("original_shape"))  # (M, L, 1)
                ip = ip * _rows(mask, mask, cond_or_uncond, q.shape[0])
            out = out + ip * _scale(branch, sigmas, out.dtype)
        return out


def latent_grid(tokens: int, original_shape) -> tuple[int, int]:
    """The (h, w) grid of a layer with ``tokens`` query positions in a UNet run on a latent of ``original_shape``
    (B, C, H, W): each downsampling halves the sides, rounding up."""
    if original_shape is None:
        raise ValueError("an attention mask needs the latent size (transformer_options['original_shape'])")
    h, w = original_shape[-2:]
    for _ in range(8):
        if h * w == tokens:
            return h, w
        h, w = -(-h // 2), -(-w // 2)
    raise ValueError(f"cannot place an attention mask on a layer with {tokens} positions for a latent of "
                     f"{original_shape[-2]}x{original_shape[-1]}")


def layer_mask(mask: torch.Tensor, tokens: int, original_shape) -> torch.Tensor:
    """Mask (M, H, W) -> (M, L, 1) on the layer's latent grid (bilinear)."""
    h, w = latent_grid(tokens, original_shape)
    if mask.shape[-2:] != (h, w):
        mask = F.interpolate(mask[:, None], size=(h, w), mode="bilinear")[:, 0]  # (M, h, w)
    return rearrange(mask, "m h w -> m (h w) 1")


def _scale(branch: Branch, sigmas, dtype):
    """The branch weight, times the weight curve, gated by the sigma range on the device (no host sync)."""
    if sigmas is None or (branch.sigma_range is None and branch.schedule is None):
        return branch.weight
    sigma = sigmas[:1]  # (1,): every row of one model call shares the step
    scale = torch.full_like(sigma, branch.weight) if branch.schedule is None else \
        branch.weight * _interpolate(sigma, *branch.schedule)
    if branch.sigma_range is not None:
        start, end = branch.sigma_range
        scale = scale * ((sigma <= start) & (sigma >= end))
    return scale.to(dtype)


def _interpolate(sigma: torch.Tensor, knots: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear value at ``sigma`` of a curve given at descending sigma ``knots``; clamped at the ends."""
    knots, values = knots.to(sigma).flip(0), values.to(sigma).flip(0)  # ascending
    right = torch.searchsorted(knots, sigma).clamp(1, knots.shape[0] - 1)
    x0, x1 = knots[right - 1], knots[right]
    t = ((sigma - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return torch.lerp(values[right - 1], values[right], t)
