"""Image projection models: CLIP image features -> image tokens (B, N, C).

Module and parameter names equal the keys under ``image_proj`` in the official weight files. Every constructor
takes ``operations`` (a namespace with Linear and LayerNorm, default ``torch.nn``) so the host can pass its own.
"""
import math

import torch
from einops import rearrange
from torch import nn


class ImageProjModel(nn.Module):
    """Base / light / vit-G: Linear(E -> tokens*C), then LayerNorm(C) per token."""

    def __init__(self, *, embed_dim: int, cross_attention_dim: int, tokens: int = 4, operations=nn):
        super().__init__()
        self.tokens = tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = operations.Linear(embed_dim, tokens * cross_attention_dim)
        self.norm = operations.LayerNorm(cross_attention_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(embeds)  # (B, N*C)
        x = rearrange(x, "b (n c) -> b n c", n=self.tokens)  # (B, N, C)
        return self.norm(x)


class MLPProjModel(nn.Module):
    """Full-face: an MLP applied to every encoder token, (B, P, W) -> (B, P, C)."""

    def __init__(self, *, embed_dim: int, cross_attention_dim: int, operations=nn):
        super().__init__()
        self.proj = nn.Sequential(
            operations.Linear(embed_dim, embed_dim),
            nn.GELU(),
            operations.Linear(embed_dim, cross_attention_dim),
            operations.LayerNorm(cross_attention_dim),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


def _feed_forward(dim: int, mult: int, operations) -> nn.Sequential:
    inner = dim * mult
    return nn.Sequential(
        operations.LayerNorm(dim),
        operations.Linear(dim, inner, bias=False),
        nn.GELU(),
        operations.Linear(inner, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to concat(features, latents); q and k each scaled by 1/sqrt(sqrt(d)), softmax in fp32."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8, operations=nn):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = dim_head * heads
        self.norm1 = operations.LayerNorm(dim)
        self.norm2 = operations.LayerNorm(dim)
        self.to_q = operations.Linear(dim, inner, bias=False)
        self.to_kv = operations.Linear(dim, inner * 2, bias=False)
        self.to_out = operations.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)  # (B, P, D)
        latents = self.norm2(latents)  # (B, N, D)
        q = self.to_q(latents)
        kv_input = torch.cat((x, latents), dim=-2)  # (B, P+N, D)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)  # (B, h, N, P+N)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = rearrange(weight @ v, "b h n d -> b n (h d)")  # (B, N, h*d)
        return self.to_out(out)


def _perceiver_layers(dim, depth, dim_head, heads, ff_mult, operations) -> nn.ModuleList:
    """``depth`` pairs (attention of the queries over [features; queries], feed-forward): keys layers.i.0 / .1."""
    return nn.ModuleList(
        nn.ModuleList([PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads, operations=operations),
                       _feed_forward(dim, ff_mult, operations)])
        for _ in range(depth))


class Resampler(nn.Module):
    """Plus / plus-face: a Perceiver resampler from the encoder's hidden states (B, P, W) to (B, N, C)."""

    def __init__(self, *, dim: int, depth: int, dim_head: int = 64, heads: int, num_queries: int,
                 embedding_dim: int, output_dim: int, ff_mult: int = 4, operations=nn):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)
        self.proj_in = operations.Linear(embedding_dim, dim)
        self.proj_out = operations.Linear(dim, output_dim)
        self.norm_out = operations.LayerNorm(output_dim)
        self.layers = _perceiver_layers(dim, depth, dim_head, heads, ff_mult, operations)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(hidden).expand(hidden.shape[0], -1, -1)  # (B, N, D)
        x = self.proj_in(hidden)  # (B, P, D)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))  # (B, N, C)


class FaceIDProjModel(nn.Module):
    """FaceID / Portrait: an MLP from the 512-d face embedding, (B, 512) -> (B, N, C) (docs/faceid.md#projections).

    ``proj``: Linear(512 -> 1024), GELU, Linear(1024 -> N*C); then LayerNorm(C) per token."""

    def __init__(self, *, embed_dim: int, hidden_dim: int, cross_attention_dim: int, tokens: int, operations=nn):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Sequential(operations.Linear(embed_dim, hidden_dim), nn.GELU(),
                                  operations.Linear(hidden_dim, tokens * cross_attention_dim))
        self.norm = operations.LayerNorm(cross_attention_dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.proj(face), "b (n c) -> b n c", n=self.tokens)  # (B, N, C)
        return self.norm(x)


class FacePerceiverResampler(nn.Module):
    """FaceID Plus: the face tokens (B, N, C) are the latents; they attend to the projected CLIP hidden states."""

    def __init__(self, *, dim: int, depth: int, dim_head: int = 64, heads: int, embedding_dim: int,
                 output_dim: int, ff_mult: int = 4, operations=nn):
        super().__init__()
        self.proj_in = operations.Linear(embedding_dim, dim)
        self.proj_out = operations.Linear(dim, output_dim)
        self.norm_out = operations.LayerNorm(output_dim)
        self.layers = _perceiver_layers(dim, depth, dim_head, heads, ff_mult, operations)

    def forward(self, latents: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(hidden)  # (B, P, D)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))  # (B, N, C)


class FaceIDPlusProjModel(FaceIDProjModel):
    """FaceID Plus / Plus v2: the FaceID MLP's tokens refined by the face crop's CLIP hidden states. Plus v2 adds
    the shortcut ``tokens + shortcut_weight * resampled`` (the reference's ``shortcut=True, scale=s_scale``)."""

    def __init__(self, *, embed_dim: int, hidden_dim: int, cross_attention_dim: int, tokens: int, clip_width: int,
                 depth: int, heads: int, ff_mult: int, operations=nn):
        super().__init__(embed_dim=embed_dim, hidden_dim=hidden_dim, cross_attention_dim=cross_attention_dim,
                         tokens=tokens, operations=operations)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=cross_attention_dim, depth=depth, heads=heads, embedding_dim=clip_width,
            output_dim=cross_attention_dim, ff_mult=ff_mult, operations=operations)

    def forward(self, face: torch.Tensor, hidden: torch.Tensor, shortcut_weight: float | None = None
                ) -> torch.Tensor:
        x = super().forward(face)  # (B, N, C)
        out = self.perceiver_resampler(x, hidden)  # (B, N, C)
        return out if shortcut_weight is None else x + shortcut_weight * out
