"""The IP-Adapter module: image projection + per-layer W'k, W'v, named exactly as the official file's keys."""
from typing import Mapping

import torch
from torch import nn

from .projection import ImageProjModel, MLPProjModel, Resampler
from .spec import AdapterSpec, detect_spec


class IPLayer(nn.Module):
    """W'k and W'v of one cross-attention layer: image tokens (B, N, C) -> keys/values (B, N, inner)."""

    def __init__(self, *, cross_attention_dim: int, inner_dim: int, operations=nn):
        super().__init__()
        self.to_k_ip = operations.Linear(cross_attention_dim, inner_dim, bias=False)
        self.to_v_ip = operations.Linear(cross_attention_dim, inner_dim, bias=False)


def build_projection(spec: AdapterSpec, operations=nn) -> nn.Module:
    common = dict(cross_attention_dim=spec.cross_attention_dim, operations=operations)
    if spec.kind == "base":
        return ImageProjModel(embed_dim=spec.encoder_width, tokens=spec.tokens, **common)
    if spec.kind == "full_face":
        return MLPProjModel(embed_dim=spec.encoder_width, **common)
    if spec.kind == "plus":
        return Resampler(dim=spec.resampler_dim, depth=spec.resampler_depth, heads=spec.resampler_heads,
                         num_queries=spec.tokens, embedding_dim=spec.encoder_width,
                         output_dim=spec.cross_attention_dim, ff_mult=spec.resampler_ff_mult,
                         operations=operations)
    raise ValueError(f"unknown adapter kind {spec.kind!r}")


class IPAdapterModel(nn.Module):
    """``state_dict()`` keys are ``image_proj.*`` and ``ip_adapter.N.to_{k,v}_ip.weight``, as in the files."""

    def __init__(self, spec: AdapterSpec, operations=nn):
        super().__init__()
        self.spec = spec
        self.image_proj = build_projection(spec, operations)
        self.ip_adapter = nn.ModuleDict({
            str(n): IPLayer(cross_attention_dim=spec.cross_attention_dim, inner_dim=inner, operations=operations)
            for n, inner in spec.layers})

    @classmethod
    def from_state_dict(cls, state_dict: Mapping, operations=nn) -> "IPAdapterModel":
        """Detect the spec, build on the meta device and load strictly (tensors are taken, not copied)."""
        spec = detect_spec(state_dict)
        with torch.device("meta"):
            model = cls(spec, operations)
        flat = {f"{part}.{key}": value for part in ("image_proj", "ip_adapter")
                for key, value in state_dict[part].items()}
        model.load_state_dict(flat, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def nested_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The official ``{"image_proj": {...}, "ip_adapter": {...}}`` layout."""
        out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in self.state_dict().items():
            part, rest = key.split(".", 1)
            out[part][rest] = value
        return out

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(n, E) pooled or (n, P, W) hidden features of n images -> (n, N, C) tokens."""
        return self.image_proj(features)

    def layer_keys_values(self, tokens: torch.Tensor, layers=None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Tokens (B, N, C) -> {layer N: (K' (B, N, inner), V' (B, N, inner))}, every layer or those in ``layers``."""
        return {int(n): (layer.to_k_ip(tokens), layer.to_v_ip(tokens)) for n, layer in self.ip_adapter.items()
                if layers is None or int(n) in layers}
