"""The decoupled cross-attention: out = Attn(Q, K, V) + weight * Attn(Q, K', V').

``IPAttentionPatch`` follows the host's attn2-replace protocol (``__call__(q, k, v, extra_options)``, ``to``,
``models``) but is plain torch: the attention function is injected. Everything it needs (the image tokens or their
K'/V', weights, sigma range, masks) is resolved before sampling; the call only selects the rows of its frames
(``frames.py``), projects per-frame tokens for those rows, attends and adds.
"""
import copy
import functools
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange

from .adapter import IPAdapterModel
from .frames import CallRows, FrameData, call_rows, chunk_rows, latent_grid, layer_mask, long_tensor  # noqa: F401


def sdpa_attention(q, k, v, heads, mask=None, attn_precision=None, **kwargs):
    """Default attention, with the host's signature: (B, L, h*d) in and out."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, L, d)
    return rearrange(out, "b h n d -> b n (h d)")


@dataclass(frozen=True)
class Branch:
    """One adapter's contribution to one layer, in one of two forms:

    - K'/V' held: ``k_cond`` ... ``v_uncond`` are (P, N, inner), P = 1 (every latent row attends to the same N
      tokens, e.g. several images' tokens concatenated) or P per-frame token sets (training: one per batch row);
    - tokens held: ``projection`` is this layer's (W'k, W'v), each (inner, C), and ``frames.tokens`` the per-frame
      image tokens shared by all layers; K'/V' are projected during the call for that call's rows only.

    ``frames`` also carries the per-frame masks and weights. Frame f reads entry min(f, S - 1) of S entries."""
    k_cond: torch.Tensor | None
    v_cond: torch.Tensor | None
    k_uncond: torch.Tensor | None
    v_uncond: torch.Tensor | None
    weight: float
    sigma_range: tuple[float, float] | None = None  # (sigma at start, sigma at end); None: every step
    schedule: tuple[torch.Tensor, torch.Tensor] | None = None  # (sigmas (K,) descending, multipliers (K,))
    frames: FrameData | None = None  # per-frame tokens, masks, weights (shared by the adapter's layers)
    projection: tuple[torch.Tensor, torch.Tensor] | None = None  # (W'k, W'v) when the tokens are held
    scaling: str = "V only"  # where the weight goes (EMBEDS_SCALINGS, docs/inference.md#embeds-scaling)
    cond_as_uncond: bool = False  # a "precise" layer with tokens held: cond rows zero, uncond rows the cond sets

    def to(self, device=None, dtype=None) -> "Branch":
        """K'/V' on ``device`` in ``dtype``; W'k/W'v copied only to another device (on their own they are cast per
        call, as the host's manual-cast layers do, so no second copy of the adapter is held)."""
        held = (None if t is None else t.to(device=device, dtype=dtype)
                for t in (self.k_cond, self.v_cond, self.k_uncond, self.v_uncond))
        schedule = None if self.schedule is None else tuple(t.to(device) for t in self.schedule)
        projection = self.projection
        if projection is not None and device is not None and projection[0].device != torch.device(device):
            projection = tuple(w.to(device=device, dtype=dtype) for w in projection)
        return replace(self, **dict(zip(("k_cond", "v_cond", "k_uncond", "v_uncond"), held)), schedule=schedule,
                       projection=projection)


EMBEDS_SCALINGS = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
_PENALTY_WIDTH = 1280.0  # the "C penalty" divides the layer's key width C by this


def scale_keys_values(mode: str, k: torch.Tensor, v: torch.Tensor, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """K'/V' (B, N, C) of the modes that weight the keys and values instead of the branch output ("V only"
    leaves them as they are): ``K+V``: w·K', w·V'; with ``C penalty`` w' = w·C/1280; ``K+mean(V) w/ C penalty``:
    w'·K' and (V' - mean(V')) + w'·mean(V'), the mean over the N tokens. ``weight``: a number or (B, 1, 1)."""
    if mode == "V only":
        return k, v
    if mode not in EMBEDS_SCALINGS:
        raise ValueError(f"unknown embeds scaling {mode!r}; choose one of {', '.join(EMBEDS_SCALINGS)}")
    if mode != "K+V":
        weight = weight * (k.shape[-1] / _PENALTY_WIDTH)
    if mode == "K+mean(V) w/ C penalty":
        mean = v.mean(dim=1, keepdim=True)  # (B, 1, C)
        return k * weight, (v - mean) + mean * weight
    return k * weight, v * weight


def _rows(features, start: int, stop: int | None = None):
    """Rows ``start:stop`` of a feature tensor, or of each tensor of a tuple of them (FaceID Plus)."""
    if isinstance(features, tuple):
        return tuple(t[start:stop] for t in features)
    return features[start:stop]


def _count(features) -> int:
    return (features[0] if isinstance(features, tuple) else features).shape[0]


def _fresh(features, device):
    """Fresh, aligned fp32 copies on ``device``: the same bits for a view, a loaded file's mapping or a copy."""
    if isinstance(features, tuple):
        return tuple(_fresh(t, device) for t in features)
    return features.to(device=device, dtype=torch.float32, copy=True, memory_format=torch.contiguous_format)


def project_tokens(adapter: IPAdapterModel, features, out: torch.Tensor | None = None,
                   chunk: int = 8, shortcut_weight: float = 1.0) -> torch.Tensor:
    """Image features (n, ...) (or a tuple of them, FaceID Plus) -> tokens (n, N, C) fp32, ``chunk`` images at a
    time into ``out`` (or a new tensor): working memory stays that of one chunk, whatever the number of frames."""
    param = next(adapter.parameters())
    count = _count(features)
    for i in range(0, count, chunk):
        part = adapter.image_tokens(_fresh(_rows(features, i, i + chunk), param.device), shortcut_weight)
        if out is None:
            out = part.new_empty((count, *part.shape[1:]))
        out[i:i + part.shape[0]] = part
    return out


def _one_row(t, chunk: int = 16) -> bool:
    """Every row of ``t`` (of each tensor of a tuple) is the same (a broadcast view, as the default negative is, or
    equal values: a loaded prompt's), compared ``chunk`` rows at a time."""
    if isinstance(t, tuple):
        return all(_one_row(part, chunk) for part in t)
    if t.shape[0] == 1 or t.stride(0) == 0:
        return True
    return all(torch.equal(t[i:i + chunk], t[:1].expand_as(t[i:i + chunk])) for i in range(1, t.shape[0], chunk))


def prompt_tokens(adapter: IPAdapterModel, prompt, unfold: bool, shortcut_weight: float = 1.0
                  ) -> tuple[torch.Tensor, int]:
    """(tokens (P + Pu, N', C), P): cond sets then uncond sets. Without ``unfold``: P = Pu = 1, the images' tokens
    concatenated (N' = n*N); with it: one set per image, Pu = 1 when every image has the same negative.
    ``prompt``: an ImagePrompt or a FacePrompt (one set per face)."""
    cond, uncond = prompt.adapter_features(adapter.spec)
    n = _count(cond)
    shared = _one_row(uncond)
    project = dict(shortcut_weight=shortcut_weight)
    first = project_tokens(adapter, _rows(cond, 0, 1), **project)
    tokens = first.new_empty((n + (1 if shared else n), *first.shape[1:]))  # (P + Pu, N, C)
    tokens[:1] = first
    project_tokens(adapter, _rows(cond, 1), tokens[1:n], **project)
    project_tokens(adapter, _rows(uncond, 0, 1) if shared else uncond, tokens[n:], **project)
    if unfold:
        return tokens, n
    cond_tokens = rearrange(tokens[:n], "i n c -> 1 (i n) c")
    uncond_tokens = tokens[n:].expand(n, -1, -1) if shared else tokens[n:]
    return torch.cat([cond_tokens, rearrange(uncond_tokens, "i n c -> 1 (i n) c")]), 1


@torch.no_grad()
def build_branches(adapter: IPAdapterModel, prompt, weight: float,
                   sigma_range: tuple[float, float] | None = None, unfold: bool = False, *,
                   layer_weights: Mapping[int, float] | None = None,
                   schedule: tuple[torch.Tensor, torch.Tensor] | None = None,
                   mask: torch.Tensor | None = None, frame_weights=None, swapped=frozenset(),
                   scaling: str = "V only", shortcut_weight: float = 1.0) -> dict[int, Branch]:
    """The branches of every layer the adapter acts on (``layer_weights``: {N: weight}, default ``weight`` on
    every layer; layers left out get none). The images are projected to tokens once, here.

    Several reference images: their tokens are concatenated (one longer image prompt), or with ``unfold`` image i
    conditions frame i. One token set for all rows: its K'/V' are computed here, once. One set per frame: only the
    tokens are kept (``FrameData``, shared by the layers), and each call projects the sets of its own rows.
    ``mask`` (M, H, W) and ``frame_weights`` (F,) are per frame as well (M or F = 1: every frame). On the
    ``swapped`` layers the cond rows get zero tokens and the uncond rows the cond tokens (the "precise" presets);
    ``scaling`` is where the weight acts (EMBEDS_SCALINGS).
    ``shortcut_weight``: FaceID Plus v2's shortcut (ignored by other adapters)."""
    prompt.check_fits(adapter.spec)
    tokens, cond_sets = prompt_tokens(adapter, prompt, unfold, shortcut_weight)
    weights = {n: weight for n, _ in adapter.spec.layers} if layer_weights is None else dict(layer_weights)
    per_frame = cond_sets > 1
    frames = None
    if per_frame or mask is not None or frame_weights is not None:
        frames = FrameData(tokens if per_frame else None, cond_sets,
                           None if mask is None else mask.detach().float().cpu(),
                           None if frame_weights is None else torch.as_tensor(frame_weights, dtype=torch.float32))
    if per_frame:
        branches = {int(n): Branch(None, None, None, None, weight, sigma_range,
                                   projection=(layer.to_k_ip.weight, layer.to_v_ip.weight))
                    for n, layer in adapter.ip_adapter.items() if layer.has_ip and int(n) in weights}
    else:
        branches = branches_from_tokens(adapter, tokens[:1], tokens[1:], weight, sigma_range, layers=weights)
    branches = {n: replace(b, weight=weights[n], schedule=schedule, frames=frames, scaling=scaling)
                for n, b in branches.items()}
    return {n: _swap(b) if n in swapped else b for n, b in branches.items()}


def _swap(branch: Branch) -> Branch:
    """The cond tokens as uncond, zero tokens (so K' = V' = 0) as cond: resolved here when K'/V' are held."""
    if branch.projection is not None:
        return replace(branch, cond_as_uncond=True)
    return replace(branch, k_cond=torch.zeros_like(branch.k_cond), v_cond=torch.zeros_like(branch.v_cond),
                   k_uncond=branch.k_cond, v_uncond=branch.v_cond)


def branches_from_tokens(adapter: IPAdapterModel, cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor,
                         weight: float, sigma_range: tuple[float, float] | None = None,
                         layers=None) -> dict[int, Branch]:
    """Tokens (P, N, C) for cond and uncond rows -> {layer N: Branch} holding K'/V', for every layer or those in
    ``layers``. Differentiable (training uses it, passing one tensor for both: its keys/values are then computed
    once)."""
    kv_cond = adapter.layer_keys_values(cond_tokens, layers)
    kv_uncond = kv_cond if uncond_tokens is cond_tokens else adapter.layer_keys_values(uncond_tokens, layers)
    return {n: Branch(*kv_cond[n], *kv_uncond[n], weight=weight, sigma_range=sigma_range) for n in kv_cond}


def _keys_values(branch: Branch, rows: CallRows, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """K'/V' (B, N, inner) for the rows of this call."""
    if branch.projection is None:
        return (chunk_rows(branch.k_cond, branch.k_uncond, rows),
                chunk_rows(branch.v_cond, branch.v_uncond, rows))
    chunks = rows.chunks
    if branch.cond_as_uncond:  # every row reads its frame's cond set; the cond rows' keys/values are then zeroed
        rows = replace(rows, chunks=(0,) * len(chunks))
    tokens, inverse = branch.frames.call_tokens(rows, device, dtype)  # (U, N, C), (B,) or None
    w_k, w_v = branch.projection
    k, v = F.linear(tokens, w_k.to(dtype)), F.linear(tokens, w_v.to(dtype))  # (U, N, inner)
    if inverse is not None:
        k, v = k.index_select(0, inverse), v.index_select(0, inverse)
    if branch.cond_as_uncond:
        keep = _uncond_rows(chunks, rows.per, torch.device(device)).to(dtype)[:, None, None]  # (B, 1, 1)
        k, v = k * keep, v * keep  # (B, N, inner)
    return k, v


@functools.lru_cache(maxsize=64)
def _uncond_rows(chunks: tuple[int, ...], per: int, device: torch.device) -> torch.Tensor:
    """(B,) 1 on the uncond rows, 0 on the others; built once per call layout and device."""
    return long_tensor((int(c == 1) for c in chunks for _ in range(per)), device)


class HostPatch:
    """The host's patch protocol, shared by the patch objects: ``copy.deepcopy`` (the host's
    ``ModelPatcher.clone``) returns the same object instead of copying tensors; ``to`` and ``models`` reach the
    patch that was there before (``inner``); ``_on`` places ``branches`` on the compute device at the first call
    (a cache, not state)."""
    branches: tuple = ()
    inner = None
    _placed_key = None  # (device, dtype) of the placed copy
    _placed: tuple = ()

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        """Host protocol (a device, then the model's dtype, before sampling; the offload device after). The
        branches are placed at the first call, on the query's device and dtype; a placement for another target
        is dropped here, so offloading frees the device copy without making one on the offload device."""
        if self.branches and self._placed_key is not None:
            device, dtype = self._placed_key
            if isinstance(device_or_dtype, torch.dtype):
                dtype = device_or_dtype
            else:
                device = torch.device(device_or_dtype)
            if (device, dtype) != self._placed_key:
                self._placed_key, self._placed = None, ()
        if hasattr(self.inner, "to"):
            self.inner = self.inner.to(device_or_dtype)
        return self

    def models(self):
        return self.inner.models() if hasattr(self.inner, "models") else []

    def stacked(self, branch) -> "HostPatch":
        """A new patch of the same kind with ``branch`` after this one's (patches are immutable: the host may
        hold this one in another clone)."""
        new = copy.copy(self)
        new.branches, new._placed_key, new._placed = self.branches + (branch,), None, ()
        return new

    def _on(self, device, dtype) -> tuple:
        if self._placed_key != (device, dtype):
            self._placed = tuple(b.to(device=device, dtype=dtype) for b in self.branches)
            self._placed_key = (device, dtype)
        return self._placed


class IPAttentionPatch(HostPatch):
    """attn2 replacement for one layer: the layer's own attention (or the patch that was there before) plus
    one decoupled image branch per stacked adapter. Immutable once built: stacking makes a new object."""

    def __init__(self, branches: tuple[Branch, ...], attention: Callable = sdpa_attention, inner=None):
        self.branches = tuple(branches)
        self.attention = attention
        self.inner = inner  # a previous attn2 replacement of another extension, or None

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        if self.inner is not None:
            out = self.inner(q, k, v, extra_options)
        else:
            out = self.attention(q, k, v, heads, attn_precision=precision, transformer_options=extra_options)
        placed = self._on(q.device, q.dtype)
        if not placed:
            return out
        rows = call_rows(extra_options, q.shape[0])
        sigmas = extra_options.get("sigmas")
        for branch in placed:
            k_ip, v_ip = _keys_values(branch, rows, q.device, q.dtype)  # (B, N, inner)
            if branch.scaling != "V only":
                out = out + self._scaled_branch(branch, q, k_ip, v_ip, rows, sigmas, extra_options)
                continue
            ip = self.attention(q, k_ip, v_ip, heads, attn_precision=precision, transformer_options=extra_options)
            out = out + branch_output(ip, branch, sigmas, out.dtype, _row_mask(branch, rows, q, extra_options),
                                      _row_weights(branch, rows, q))
        return out

    def _scaled_branch(self, branch: Branch, q, k_ip, v_ip, rows, sigmas, extra_options):
        """A branch whose weight (× curve × frame weight) scales K'/V' (scale_keys_values); the sigma range and
        the mask still multiply the output, so outside them it adds exactly nothing."""
        weight = _scale(branch, sigmas, q.dtype, gate=False)
        frame_weights = _row_weights(branch, rows, q)
        if frame_weights is not None:
            weight = weight * frame_weights  # (B, 1, 1)
        k_ip, v_ip = scale_keys_values(branch.scaling, k_ip, v_ip, weight)
        ip = self.attention(q, k_ip, v_ip, extra_options["n_heads"], attn_precision=extra_options.get(
            "attn_precision"), transformer_options=extra_options)
        return branch_output(ip, branch, sigmas, ip.dtype, _row_mask(branch, rows, q, extra_options),
                             weighted=False)


def _row_mask(branch: Branch, rows, q, extra_options):
    """(B, L, 1) mask of the call's rows, or None."""
    frames = branch.frames
    if frames is None or frames.mask is None:
        return None
    return frames.row_mask(rows, q.shape[1], extra_options.get("original_shape"), q.device, q.dtype)


def _row_weights(branch: Branch, rows, q):
    """(B, 1, 1) frame weights of the call's rows, or None."""
    frames = branch.frames
    if frames is None or frames.weights is None:
        return None
    return frames.row_weights(rows, q.device, q.dtype)


def branch_output(ip: torch.Tensor, branch, sigmas, dtype, *masks, weighted: bool = True) -> torch.Tensor:
    """The one path from a branch's attention output ``ip`` (B, L, C) to what is added: times each mask that is not
    None (in order), then times the weight and curve, gated by the sigma range (``_scale``, in ``dtype``).
    ``weighted=False``: the weight already scaled K'/V' (``scale_keys_values``); only the gate multiplies."""
    for mask in masks:
        if mask is not None:
            ip = ip * mask
    if not weighted:
        gate = _gate(branch, sigmas)
        return ip if gate is None else ip * gate.to(dtype)
    return ip * _scale(branch, sigmas, dtype)


def _gate(branch, sigmas) -> torch.Tensor | None:
    """(1,) bool: the step's sigma inside the branch's sigma range (inclusive), on the device (no host sync); None
    when every step is on."""
    if branch.sigma_range is None or sigmas is None:
        return None
    start, end = branch.sigma_range
    sigma = sigmas[:1]  # (1,): every row of one model call shares the step
    return (sigma <= start) & (sigma >= end)


def _scale(branch, sigmas, dtype, gate: bool = True):
    """The branch weight, times the weight curve, gated (``gate``) by the sigma range on the device (no host
    sync)."""
    if sigmas is None or ((branch.sigma_range is None or not gate) and branch.schedule is None):
        return branch.weight
    sigma = sigmas[:1]  # (1,): every row of one model call shares the step
    scale = torch.full_like(sigma, branch.weight) if branch.schedule is None else \
        branch.weight * _interpolate(sigma, *branch.schedule)
    on = _gate(branch, sigmas) if gate else None
    if on is not None:
        scale = scale * on
    return scale.to(dtype)


def _interpolate(sigma: torch.Tensor, knots: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear value at ``sigma`` of a curve given at descending sigma ``knots``; clamped at the ends."""
    knots, values = knots.to(sigma).flip(0), values.to(sigma).flip(0)  # ascending
    right = torch.searchsorted(knots, sigma).clamp(1, knots.shape[0] - 1)
    x0, x1 = knots[right - 1], knots[right]
    t = ((sigma - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return torch.lerp(values[right - 1], values[right], t)
