"""The DiT families' patches (``patches_replace["dit"]`` entries, all on the shared ``attention.HostPatch`` base and
its one ``branch_output`` path) and their branch builders: ``DiTBlockPatch`` (XLabs Flux, docs/inference.md#flux),
``InstantXFluxPatch`` (docs/inference.md#instantx-flux), ``SD35BlockPatch`` (docs/inference.md#sd35).

XLabs' processor adds, after the whole double block, ``img += λ · Attn(q, K', V')`` where q is the block's own
image-stream query (modulated LayerNorm, the q rows of ``img_attn.qkv``, the block's RMSNorm) **before** RoPE, and
K'/V' are the image tokens projected with bias, split into the block's heads. ``DiTBlockPatch`` computes that q
from the block's modules, lets the block (or the patch that was there before) run unchanged, and adds each
stacked adapter's branch to the image tokens. Pure torch: the attention and the weight access are injected.
"""
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange

from .attention import Branch, HostPatch, branch_output, prompt_tokens
from .dit_sd3 import StepTokens, norm_ratio, sd35_image_attention, sd35_query_key
from .frames import FrameData, call_rows, chunk_rows
from .image_prompt import ImagePrompt

LATENT_SHAPE_KEY = "ipadapter_latent_shape"  # transformer_options entry: the latent's (B, C, H, W), for masks
TEXT_TOKENS_KEY = "ipadapter_text_tokens"  # ... and the text context's token count (where a single block's image
# tokens start)


def sdpa_heads(q, k, v, heads, skip_reshape=True, **kwargs):
    """Default attention with the host's ``skip_reshape`` signature: (B, h, L, d) in, (B, L, h*d) out."""
    out = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, d)
    return rearrange(out, "b h l d -> b l (h d)")


def own_weights(linear, like: torch.Tensor):
    """A Linear's (weight, bias) in ``like``'s dtype and device (the host passes its casting function instead)."""
    bias = None if linear.bias is None else linear.bias.to(like)
    return linear.weight.to(like), bias


def flux_image_query(block, img: torch.Tensor, vec: torch.Tensor, weights=own_weights) -> torch.Tensor:
    """A Flux double block's image-stream query for ``img`` (B, L, H), before RoPE: (B, h, L, d)."""
    mod, _ = block.img_mod(vec)  # shift, scale: (B, 1, H)
    x = torch.addcmul(mod.shift, block.img_norm1(img), 1 + mod.scale)  # (B, L, H)
    weight, bias = weights(block.img_attn.qkv, x)  # rows: q, k, v, each H
    hidden = x.shape[-1]
    q = F.linear(x, weight[:hidden], None if bias is None else bias[:hidden])  # (B, L, h*d)
    q = rearrange(q, "b l (h d) -> b h l d", h=block.num_heads)
    return block.img_attn.norm.query_norm(q).to(x.dtype)


@torch.no_grad()
def build_dit_branches(adapter, prompt: ImagePrompt, block_weights: Mapping[tuple[str, int], float],
                       sigma_range: tuple[float, float] | None = None, *, schedule=None,
                       mask: torch.Tensor | None = None, compute_device=None,
                       **kv_options) -> dict[tuple[str, int], Branch]:
    """{block key: Branch} holding K'/V' (1, N, H) for cond and uncond rows, for the blocks in ``block_weights``.
    The images are projected once, here; several images' tokens are concatenated. ``mask`` (M, H, W).
    ``compute_device``: where K'/V' are computed (the adapter's host layers bring their weights there block by
    block), kept on the tokens' device. ``kv_options`` go to the adapter's ``block_keys_values`` (InstantX: the
    model's ``head_dim``)."""
    prompt.check_fits(adapter.spec)
    tokens, _ = prompt_tokens(adapter, prompt, unfold=False)  # (2, N, C): cond, uncond
    store = tokens.device
    tokens = tokens if compute_device is None else tokens.to(compute_device)
    kv_cond, kv_uncond = ({key: tuple(t.to(store) for t in kv) for key, kv in
                           adapter.block_keys_values(part, block_weights, **kv_options).items()}
                          for part in (tokens[:1], tokens[1:]))
    frames = None if mask is None else FrameData(None, 0, mask.detach().float().cpu(), None)
    return {key: Branch(*kv_cond[key], *kv_uncond[key], weight=block_weights[key], sigma_range=sigma_range,
                        schedule=schedule, frames=frames)
            for key in kv_cond}


def _token_grid(options: Mapping, patch_size: int) -> tuple[int, int]:
    """The latent's grid of image tokens (the model pads the latent to its patch size)."""
    shape = options.get(LATENT_SHAPE_KEY)
    if shape is None:
        raise ValueError("a masked IP-Adapter branch needs the latent size: apply it through Apply IP-Adapter")
    return tuple(-(-side // patch_size) for side in shape[-2:])


def _token_mask(frames: FrameData, rows, tokens: int, options: Mapping, patch_size: int, device, dtype):
    """(B, L, 1) mask for the image stream: the latent's grid of patches first, any further tokens (reference
    latents) unmasked to 0."""
    h, w = _token_grid(options, patch_size)
    mask = frames.row_mask(rows, h * w, (h, w), device, dtype)  # (B, h*w, 1)
    if tokens > h * w:
        mask = F.pad(mask, (0, 0, 0, tokens - h * w))
    return mask


class DiTBlockPatch(HostPatch):
    """``patches_replace["dit"]`` entry of one block: the block (or the patch that was there before, ``inner``),
    then one image branch per stacked adapter added to the image tokens. Immutable once built (stacking makes a
    new object)."""

    def __init__(self, block, branches: tuple[Branch, ...], *, heads: int, patch_size: int = 2,
                 weights=own_weights, attention: Callable = sdpa_heads, inner=None):
        self.block, self.branches, self.heads, self.patch_size = block, tuple(branches), heads, patch_size
        self.weights, self.attention, self.inner = weights, attention, inner

    def __call__(self, args, extra):
        img = args["img"]
        query = flux_image_query(self.block, img, args["vec"], self.weights)  # (B, h, L, d), before the block
        out = self.inner(args, extra) if self.inner is not None else extra["original_block"](args)
        options = args.get("transformer_options") or {}
        rows = call_rows(options, img.shape[0])
        sigmas = options.get("sigmas")
        added = out["img"]
        for branch in self._on(img.device, img.dtype):
            k, v = (rearrange(chunk_rows(c, u, rows), "b n (h d) -> b h n d", h=self.heads)
                    for c, u in ((branch.k_cond, branch.k_uncond), (branch.v_cond, branch.v_uncond)))
            ip = self.attention(query, k, v, self.heads, skip_reshape=True, transformer_options=options)  # (B, L, H)
            mask = None if branch.frames is None else _token_mask(
                branch.frames, rows, ip.shape[1], options, self.patch_size, ip.device, ip.dtype)
            added = added + branch_output(ip, branch, sigmas, added.dtype, mask)
        return {**out, "img": added}


def unrotate(q: torch.Tensor, pe: torch.Tensor | None) -> torch.Tensor:
    """The query before RoPE from the rotated one the host's Flux attention gets: each channel pair turned back
    by the transpose of its 2x2 rotation. q (B, h, L, d); pe (B, 1, L, d/2, 2, 2) as the host's ``EmbedND``
    makes it (fp32), or None (no rotation)."""
    if pe is None:
        return q
    pairs = q.float().reshape(*q.shape[:-1], -1, 1, 2)  # (B, h, L, d/2, 1, 2)
    back = pe.transpose(-1, -2)  # the inverse rotations
    out = back[..., 0] * pairs[..., 0] + back[..., 1] * pairs[..., 1]  # (B, h, L, d/2, 2)
    return out.reshape(q.shape).to(q.dtype)


def _sequence_mask(frames: FrameData, rows, options: Mapping, total: int, patch_size: int, device, dtype):
    """(B, total, 1) mask over a single block's joint sequence: text tokens 0, the latent's grid of patches from
    the mask, tokens after it (reference latents) 0."""
    text = options.get(TEXT_TOKENS_KEY)
    if text is None:
        raise ValueError("a masked IP-Adapter branch needs the text length: apply it through Apply IP-Adapter")
    h, w = _token_grid(options, patch_size)
    if text + h * w > total:
        raise ValueError(f"a masked IP-Adapter branch expected {text} text tokens and {h * w} image tokens in a "
                         f"single block's sequence of {total}: another extension changed the sequence; apply the "
                         "IP-Adapter without attn_mask")
    mask = _token_mask(frames, rows, total - text, options, patch_size, device, dtype)  # (B, total - text, 1)
    return F.pad(mask, (0, 0, text, 0))


class InstantXFluxPatch(HostPatch):
    """``patches_replace["dit"]`` entry of one Flux double or single block for InstantX FLUX.1-dev adapters
    (docs/inference.md#instantx-flux). The block (or the patch that was there, ``inner``) runs with an
    ``optimized_attention_override`` in a copy of its transformer_options that adds each branch's
    ``λ · Attn(q, K', V')`` to the joint attention's output before the block's output projection: on the image
    tokens in a double block, on every token in a single block. q is the block's own query before RoPE (turned
    back from the rotated one the attention gets). Immutable."""

    def __init__(self, branches: tuple[Branch, ...], *, double: bool, heads: int, img_first: bool = False,
                 patch_size: int = 2, attention: Callable = sdpa_heads, inner=None):
        self.branches, self.double, self.heads, self.img_first = tuple(branches), double, heads, img_first
        self.patch_size, self.attention, self.inner = patch_size, attention, inner

    def _terms(self, query, options, rows, device, dtype) -> torch.Tensor:
        """Sum over the branches of weight x gate x mask x Attn(q, K', V'), (B, L, h*d) for q (B, h, L, d)."""
        sigmas = options.get("sigmas")
        total = 0
        for branch in self._on(device, dtype):
            k, v = (rearrange(chunk_rows(c, u, rows), "b n (h d) -> b h n d", h=self.heads)
                    for c, u in ((branch.k_cond, branch.k_uncond), (branch.v_cond, branch.v_uncond)))
            ip = self.attention(query, k, v, self.heads, skip_reshape=True)  # (B, L, h*d)
            mask = None
            if branch.frames is not None:
                mask = (_token_mask(branch.frames, rows, ip.shape[1], options, self.patch_size, device, dtype)
                        if self.double else
                        _sequence_mask(branch.frames, rows, options, ip.shape[1], self.patch_size, device, dtype))
            total = total + branch_output(ip, branch, sigmas, dtype, mask)
        return total

    def __call__(self, args, extra):
        img, pe = args["img"], args.get("pe")
        options = args.get("transformer_options") or {}
        rows = call_rows(options, img.shape[0])
        text = args["txt"].shape[1] if self.double else 0
        length = text + img.shape[1]
        # the tokens that get the term: a double block's image tokens (after the text unless the block puts the
        # image first), a single block's whole sequence
        part = slice(0, img.shape[1]) if self.img_first else slice(text, length)
        rotation = None if pe is None else pe[:, :, part]
        previous = options.get("optimized_attention_override")

        def override(func, *a, **kw):
            out = previous(func, *a, **kw) if previous is not None else func(*a, **kw)
            q = a[0] if a else kw.get("q")
            if q is None or q.dim() != 4 or q.shape[2] != length:  # not this block's joint attention
                return out
            query = unrotate(q[:, :, part], rotation)  # (B, h, L, d)
            terms = self._terms(query, options, rows, out.device, out.dtype)  # (B, L, h*d)
            if part.stop - part.start == length:  # a single block: every token
                return out + terms
            return torch.cat([out[:, :part.start], out[:, part] + terms, out[:, part.stop:]], dim=1)  # (B, T+L, h*d)

        args = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
        return self.inner(args, extra) if self.inner is not None else extra["original_block"](args)


@dataclass(frozen=True)
class StepBranch:
    """One SD3.5 adapter's contribution to one joint block: its weights there, the call's tokens (shared by the
    application's blocks), the weight, sigma range, curve and mask."""
    block: object  # dit_sd3.SD35Block
    tokens: StepTokens
    weight: float
    sigma_range: tuple[float, float] | None = None
    schedule: tuple[torch.Tensor, torch.Tensor] | None = None
    frames: FrameData | None = None
    ratios: tuple[torch.Tensor, torch.Tensor] | None = None  # (q, k) model-norm -> adapter-norm factors (d,)


def with_norm_ratios(branches: Mapping, joint_blocks: Mapping) -> dict:
    """Each branch with the factors that turn its joint block's own normed q/k into the adapter's (``norm_ratio``),
    or unchanged when the block's norms do not allow it."""
    out = {}
    for key, branch in branches.items():
        attn = joint_blocks[key].x_block.attn
        q, k = norm_ratio(attn.ln_q, branch.block.norm_q), norm_ratio(attn.ln_k, branch.block.norm_k)
        out[key] = branch if q is None or k is None else replace(branch, ratios=(q, k))
    return out


@torch.no_grad()
def build_sd35_branches(adapter, prompt: ImagePrompt, block_weights: Mapping[tuple[str, int], float], timestep_of,
                        sigma_range=None, *, schedule=None, mask=None) -> dict[tuple[str, int], StepBranch]:
    """{block key: StepBranch}; the hidden states are kept and resampled at each call (the resampler reads the
    timestep)."""
    prompt.check_fits(adapter.spec)
    cond, uncond = prompt.features("hidden")  # (n, P, W) each
    tokens = StepTokens(adapter, cond.detach().float(), uncond.detach().float(), timestep_of)
    frames = None if mask is None else FrameData(None, 0, mask.detach().float().cpu(), None)
    return {key: StepBranch(adapter.ip_adapter[str(key[1])], tokens, w, sigma_range, schedule, frames)
            for key, w in block_weights.items()}


class SD35BlockPatch(HostPatch):
    """``patches_replace["dit"]`` entry of one MMDiT joint block for InstantX SD3.5 adapters: the block (or the
    patch that was there, ``inner``) runs with an ``optimized_attention_override`` in a copy of its
    transformer_options that adds each branch's image attention to the image tokens' part of the joint attention
    output, before the block's output projection (where the reference adds it). Immutable."""

    def __init__(self, block, branches: tuple[StepBranch, ...], *, patch_size: int = 2, weights=own_weights,
                 inner=None):
        self.block, self.branches, self.patch_size, self.weights, self.inner = (
            block, tuple(branches), patch_size, weights, inner)

    def _image_terms(self, options, rows, qk, v, device, dtype) -> torch.Tensor:
        """Sum over the branches of weight x mask x the image attention, (B, L, h*d). ``qk``: the image tokens'
        (q, k) as the model normed them, and the raw ones or None, each (B, h, L, d)."""
        sigmas = options.get("sigmas")
        total = 0
        for branch in self.branches:
            tokens, temb = branch.tokens.get(sigmas, rows, chunk_rows, device, dtype)
            k_ip, v_ip = branch.block.keys_values(tokens, temb)  # (B, h, N, d)
            ip = _branch_attention(branch, qk, v, k_ip, v_ip)  # (B, L, h*d)
            mask = None if branch.frames is None else _token_mask(
                branch.frames, rows, ip.shape[1], options, self.patch_size, device, dtype)
            total = total + branch_output(ip, branch, sigmas, dtype, mask)
        return total

    def __call__(self, args, extra):
        img, txt = args["img"], args["txt"]
        options = args.get("transformer_options") or {}
        rows = call_rows(options, img.shape[0])
        raw = None  # the raw q, k (B, h, L, d), recomputed only for branches without norm ratios
        if any(b.ratios is None for b in self.branches):
            raw = sd35_query_key(self.block, img, args["vec"], self.weights)
        context, length = (0 if txt is None else txt.shape[1]), img.shape[1]
        heads = self.block.x_block.attn.num_heads
        previous = options.get("optimized_attention_override")

        def override(func, *a, **kw):
            out = previous(func, *a, **kw) if previous is not None else func(*a, **kw)
            if a[0].shape[1] != context + length:  # not the joint attention (the x-only attention of some blocks)
                return out
            q, k, v = (t[:, context:].reshape(img.shape[0], length, heads, -1).transpose(1, 2) for t in a[:3])
            added = out[:, context:] + self._image_terms(options, rows, (q, k, raw), v, out.device, out.dtype)
            return torch.cat([out[:, :context], added], dim=1)  # (B, T+L, h*d)

        args = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
        return self.inner(args, extra) if self.inner is not None else extra["original_block"](args)


def _branch_attention(branch: StepBranch, qk, v, k_ip, v_ip) -> torch.Tensor:
    """One branch's image attention from the model's normed q/k (times the norm ratios) or the raw ones."""
    q_model, k_model, raw = qk
    if branch.ratios is None:
        return sd35_image_attention(branch.block, *raw, v, k_ip, v_ip)
    q_ratio, k_ratio = (r.to(device=v.device, dtype=v.dtype) for r in branch.ratios)
    keys = torch.cat([k_model * k_ratio, k_ip], dim=2)  # (B, h, L+N, d)
    out = F.scaled_dot_product_attention(q_model * q_ratio, keys, torch.cat([v, v_ip], dim=2))  # (B, h, L, d)
    return rearrange(out, "b h l d -> b l (h d)")
