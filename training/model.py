"""The trainable part: an IPAdapterModel, run inside the host's frozen UNet through the nodes' attention patch.

``AdapterTraining.forward`` projects image features to tokens, makes one ``Branch`` per layer with
``branches_from_tokens`` and places ``IPAttentionPatch`` objects under the host's attn2-replace keys
(``transformer_options["patches_replace"]["attn2"]``), exactly as ``host/patching.apply_ip_adapter`` does for sampling;
row i of the latent batch reads token set i. Only the adapter is a submodule: the frozen UNet is held outside the
module tree, so DDP / DeepSpeed see (and shard, and save) only trainable weights.
"""
import logging
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..host.unet import cross_attention_layers, transformer_blocks
from ..ipadapter_core import LAYOUTS, AdapterSpec, IPAdapterModel, IPAttentionPatch, branches_from_tokens
from ..ipadapter_core import load_adapter_file
from .objective import noised_input, prediction_type
from .objective import target as training_target

log = logging.getLogger(__name__)
RESAMPLER_DIM = {"sd15": 768, "sdxl": 1280}


def new_spec(frozen, variant: str, resampler_dim: int | None = None) -> AdapterSpec:
    """The spec of a fresh adapter for this host model: base (4 tokens, pooled) or plus (16 tokens, hidden)."""
    layers = cross_attention_layers(frozen.patcher)
    sites = LAYOUTS[frozen.family]
    context_dim = layers[sites[0].key].to_k.in_features
    widths = tuple((site.n, layers[site.key].to_k.out_features) for site in sites)
    common = dict(cross_attention_dim=context_dim, family=frozen.family, layers=widths)
    if variant == "base":
        return AdapterSpec(kind="base", feature="pooled", tokens=4, encoder_width=frozen.embed_width, **common)
    if variant == "plus":
        dim = resampler_dim or RESAMPLER_DIM[frozen.family]
        return AdapterSpec(kind="plus", feature="hidden", tokens=16, encoder_width=frozen.hidden_width,
                           resampler_dim=dim, resampler_depth=4, resampler_heads=dim // 64, resampler_ff_mult=4,
                           **common)
    raise ValueError(f"unknown variant {variant!r}: use 'base' (4 tokens) or 'plus' (resampler, 16 tokens)")


def new_adapter(frozen, spec: AdapterSpec, seed: int) -> IPAdapterModel:
    """Projection with torch's default init (seeded); every W'k, W'v a copy of the layer's Wk, Wv at the
    checkpoint's own precision: from the file's tensors when load_frozen read them, else from the UNet, which must
    not have been cast to a mixed-precision dtype yet (``main`` builds the adapter first)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = IPAdapterModel(spec)
    layers = cross_attention_layers(frozen.patcher)
    source = getattr(frozen, "source_weights", None) or {
        key: (attn.to_k.weight, attn.to_v.weight) for key, attn in layers.items()}
    with torch.no_grad():
        for site in LAYOUTS[spec.family]:
            ip = adapter.ip_adapter[str(site.n)]
            ip.to_k_ip.weight.copy_(source[site.key][0].float())
            ip.to_v_ip.weight.copy_(source[site.key][1].float())
    return adapter


def adapter_from_file(path, frozen) -> IPAdapterModel:
    """Fine-tuning: start from an existing adapter file (checked against the model), trainable fp32 copy."""
    state_dict, spec = load_adapter_file(path)
    if spec.family != frozen.family:
        raise ValueError(f"'{path}' is an adapter for {spec.family_name} models, the checkpoint is not")
    adapter = IPAdapterModel(spec)
    flat = {f"{part}.{key}": value.float() for part in state_dict for key, value in state_dict[part].items()}
    adapter.load_state_dict(flat, strict=True)
    return adapter


class AdapterTraining(nn.Module):
    """forward(features, context, latents, noise, timesteps, y) -> the UNet's output (B, C, h, w), fp32: epsilon
    or v, as the host model predicts (``prediction``; other prediction types are refused here)."""

    def __init__(self, adapter: IPAdapterModel, base_model, attention, gradient_checkpointing: bool = False):
        super().__init__()
        self.prediction = prediction_type(base_model.model_sampling)  # 'eps' or 'v'; raises UnsupportedModel
        self.adapter = adapter
        self._host = (base_model,)  # a tuple: not registered as a submodule
        self.attention = attention
        if gradient_checkpointing:
            checkpoint_transformers(base_model.diffusion_model)

    def transformer_options(self, features: torch.Tensor, weight: float) -> dict:
        tokens = self.adapter.image_tokens(features.float())  # (B, N, C)
        branches = branches_from_tokens(self.adapter, tokens, tokens, weight)
        attn2 = {site.key: IPAttentionPatch((branches[site.n],), attention=self.attention)
                 for site in LAYOUTS[self.adapter.spec.family]}
        return {"patches_replace": {"attn2": attn2}, "cond_or_uncond": [0]}  # one chunk: row i uses set i

    def forward(self, features, context, latents, noise, timesteps, y=None, weight: float = 1.0):
        base = self._host[0]
        model_in, t = noised_input(base.model_sampling, latents, noise, timesteps)  # sqrt(a)x0 + sqrt(1-a)eps
        dtype = next(base.diffusion_model.parameters()).dtype
        extra = {} if y is None else {"y": y.to(dtype)}
        out = base.diffusion_model(model_in.to(dtype), t, context=context.to(dtype),
                                   transformer_options=self.transformer_options(features, weight), **extra)
        return out.float()

    def target(self, latents, noise, timesteps) -> torch.Tensor:
        """What ``forward`` is trained to give for these draws: the noise (eps models) or v (v-prediction)."""
        return training_target(self._host[0].model_sampling, latents, noise, timesteps)


def checkpoint_transformers(unet: nn.Module) -> None:
    """Gradient checkpointing of every SpatialTransformer (where the activations are). The host mutates
    transformer_options while a block runs, so each call keeps its own shallow copy for the recomputation."""
    for module in transformer_blocks(unet):
        if not getattr(module, "_ip_checkpointed", False):
            module.forward = partial(_checkpointed, module.forward)
            module._ip_checkpointed = True


def _checkpointed(forward, x, context=None, transformer_options={}, **kwargs):
    options = dict(transformer_options)
    return checkpoint(forward, x, context, options, use_reentrant=False, **kwargs)
