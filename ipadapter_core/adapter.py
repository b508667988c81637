"""The IP-Adapter module: image projection + per-layer W'k, W'v, named exactly as the official file's keys."""
from typing import Mapping

import torch
from torch import nn

from .projection import FaceIDPlusProjModel, FaceIDProjModel, ImageProjModel, MLPProjModel, Resampler
from .spec import AdapterSpec, detect_spec

LORA_TARGETS = ("q", "k", "v", "out")  # to_{name}_lora patches the layer's to_q, to_k, to_v, to_out.0


class LoRAPair(nn.Module):
    """One low-rank update: ``up @ down`` (out, in), added to a weight as ``W + strength * up @ down``."""

    def __init__(self, in_dim: int, out_dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_dim, rank, bias=False)
        self.up = nn.Linear(rank, out_dim, bias=False)

    def delta(self) -> torch.Tensor:
        return self.up.weight.float() @ self.down.weight.float()  # (out, in)


class IPLayer(nn.Module):
    """One attention layer N of the file: W'k and W'v (cross-attention, image tokens (B, N, C) -> keys/values
    (B, N, inner)) and, in FaceID files, the LoRA ``to_{q,k,v,out}_lora`` of that layer (self-attention layers
    have only the LoRA)."""

    def __init__(self, *, cross_attention_dim: int, inner_dim: int, operations=nn, lora_rank: int = 0,
                 lora_kv_dim: int = 0, ip: bool = True):
        super().__init__()
        if ip:
            self.to_k_ip = operations.Linear(cross_attention_dim, inner_dim, bias=False)
            self.to_v_ip = operations.Linear(cross_attention_dim, inner_dim, bias=False)
        if lora_rank:
            for name in LORA_TARGETS:
                in_dim = lora_kv_dim if name in ("k", "v") else inner_dim
                setattr(self, f"to_{name}_lora", LoRAPair(in_dim, inner_dim, lora_rank))

    @property
    def has_ip(self) -> bool:
        return hasattr(self, "to_k_ip")


def build_projection(spec: AdapterSpec, operations=nn) -> nn.Module:
    common = dict(cross_attention_dim=spec.cross_attention_dim, operations=operations)
    if spec.kind == "base":
        return ImageProjModel(embed_dim=spec.encoder_width, tokens=spec.tokens, **common)
    if spec.kind == "full_face":
        return MLPProjModel(embed_dim=spec.encoder_width, **common)
    if spec.kind in ("plus", "faceid_resampler"):
        return Resampler(dim=spec.resampler_dim, depth=spec.resampler_depth, heads=spec.resampler_heads,
                         num_queries=spec.tokens, embedding_dim=spec.encoder_width,
                         output_dim=spec.cross_attention_dim, ff_mult=spec.resampler_ff_mult,
                         operations=operations)
    face = dict(embed_dim=spec.encoder_width, hidden_dim=2 * spec.encoder_width, tokens=spec.tokens, **common)
    if spec.kind == "faceid":
        return FaceIDProjModel(**face)
    if spec.kind == "faceid_plus":
        return FaceIDPlusProjModel(clip_width=spec.clip_width, depth=spec.resampler_depth,
                                   heads=spec.resampler_heads, ff_mult=spec.resampler_ff_mult, **face)
    raise ValueError(f"unknown adapter kind {spec.kind!r}")


class IPAdapterModel(nn.Module):
    """``state_dict()`` keys are ``image_proj.*`` and ``ip_adapter.N.to_{k,v}_ip.weight``, as in the files."""

    def __init__(self, spec: AdapterSpec, operations=nn):
        super().__init__()
        self.spec = spec
        self.image_proj = build_projection(spec, operations)
        inner = dict(spec.layers)
        numbers = sorted(set(inner) | set(spec.lora_layers))
        self.ip_adapter = nn.ModuleDict({
            str(n): IPLayer(cross_attention_dim=spec.cross_attention_dim, inner_dim=inner[n | 1],
                            operations=operations, ip=n in inner,
                            lora_rank=spec.lora_rank if n in spec.lora_layers else 0,
                            lora_kv_dim=spec.cross_attention_dim if n % 2 else inner[n | 1])
            for n in numbers})

    @classmethod
    def from_state_dict(cls, state_dict: Mapping, operations=nn, faceid_variant: str = "auto"
                        ) -> "IPAdapterModel":
        """Detect the spec, build on the meta device and load strictly (tensors are taken, not copied)."""
        spec = detect_spec(state_dict, faceid_variant)
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

    def image_tokens(self, features, shortcut_weight: float = 1.0) -> torch.Tensor:
        """(n, E) pooled or (n, P, W) hidden features of n images -> (n, N, C) tokens. FaceID: (n, 512) face
        embeddings, and for Plus the pair (faces (n, 512), face crops' hidden states (n, P, W)); Plus v2 adds its
        shortcut with ``shortcut_weight`` (docs/faceid.md#projections)."""
        kind = self.spec.kind
        if kind == "faceid_plus":
            face, hidden = features
            return self.image_proj(face, hidden, shortcut_weight if self.spec.variant == "plus v2" else None)
        if kind == "faceid_resampler":
            return self.image_proj(features[:, None])  # (n, 1, 512): each face is one input token
        return self.image_proj(features)

    def lora_deltas(self) -> dict[tuple[int, str], torch.Tensor]:
        """{(N, "q" | "k" | "v" | "out"): up @ down (out, in), fp32} of the embedded FaceID LoRA; empty without."""
        return {(int(n), name): getattr(layer, f"to_{name}_lora").delta()
                for n, layer in self.ip_adapter.items() if hasattr(layer, "to_q_lora") for name in LORA_TARGETS}

    def layer_keys_values(self, tokens: torch.Tensor, layers=None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Tokens (B, N, C) -> {layer N: (K' (B, N, inner), V' (B, N, inner))}, every layer or those in ``layers``."""
        return {int(n): (layer.to_k_ip(tokens), layer.to_v_ip(tokens)) for n, layer in self.ip_adapter.items()
                if layer.has_ip and (layers is None or int(n) in layers)}
