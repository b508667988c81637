"""The frozen models (UNet, VAE, text encoder, image encoder), as the host loads them, behind four calls.

``load_frozen`` is a thin layer over the host's own loaders (``host/loaders.py``:
``comfy.sd.load_checkpoint_guess_config``, ``comfy.clip_vision.load``); anything else that fills a
``FrozenModels`` (the tests' tiny models) trains the same.
"""
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)
MAX_TEXT_TOKENS = 77  # one CLIP window, as the reference trainer


@dataclass
class FrozenModels:
    """patcher: the host's ModelPatcher around a BaseModel (``diffusion_model``, ``model_sampling``).
    encode_latents: pixels (B, 3, R, R) in [0, 1] -> scaled latents (B, 4, R/8, R/8).
    encode_text: B strings -> context (B, T, C) and pooled (B, Cp) or None.
    encode_image: pixels (B, 3, R, R) in [0, 1] -> pooled embeds (B, E), penultimate hidden states (B, P, W).
    zero_image_hidden: (1, P, W), the encoder's output for the all-zero normalised pixel tensor.
    vae / clip / clip_vision: the host objects, for validation images through the nodes (None: no validation)."""
    patcher: Any
    family: str
    encode_latents: Callable
    encode_text: Callable
    encode_image: Callable
    zero_image_hidden: torch.Tensor
    embed_width: int
    vae: Any = None
    clip: Any = None
    clip_vision: Any = None

    @property
    def base_model(self):
        return self.patcher.model

    def with_cache_widths(self, embed_width: int, zero_image_hidden: torch.Tensor | None) -> "FrozenModels":
        """A UNet-only run: the encoder facts the adapter's spec needs, as the cache recorded them."""
        self.embed_width, self.zero_image_hidden = embed_width, zero_image_hidden
        return self

    @property
    def hidden_width(self) -> int:
        return self.zero_image_hidden.shape[-1]

    def to(self, device, dtype=None):
        """Place the UNet (stored in ``dtype`` when given) where training runs."""
        unet = self.base_model.diffusion_model
        unet.to(device=device, dtype=dtype).requires_grad_(False).eval()
        if dtype is not None:
            unet.dtype = dtype  # the host casts inputs to this attribute (BaseModel.get_dtype)
        self.base_model.model_sampling.to(device)
        return self


def host_family(patcher) -> str:
    """'sd15' or 'sdxl' from the host UNet's cross-attention sites (the layer table is the only truth)."""
    from ..host.unet import unet_family
    return unet_family(patcher)


def from_factory(spec: str) -> FrozenModels:
    """``MODULE:FUNCTION`` (``--models-from``) -> the FrozenModels that function returns (custom hosts, tests)."""
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)()


def load_frozen(checkpoint: str, clip_vision: str | None, dtype: torch.dtype | None, encoders: bool = True,
                unet_dtype: torch.dtype | None = None) -> FrozenModels:
    """An SD1.5/SDXL single-file checkpoint and a CLIP vision file, loaded by the host's own loaders, stored in
    ``dtype``, the UNet in ``unet_dtype`` when given (the trainer: fp32, exact for any checkpoint precision, so
    a fresh adapter copies the checkpoint's own Wk, Wv; ``FrozenModels.to`` casts it afterwards).
    ``encoders=False``: the UNet only (training from a cache needs nothing else)."""
    from ..host import loaders, vision as host_vision

    patcher, clip, vae = loaders.load_checkpoint(checkpoint, dtype, encoders, unet_dtype)
    if not encoders:
        return FrozenModels(patcher=patcher, family=host_family(patcher), encode_latents=_no_encoder,
                            encode_text=_no_encoder, encode_image=_no_encoder, zero_image_hidden=None,
                            embed_width=0)
    vision = loaders.load_clip_vision(clip_vision)
    zero_hidden = host_vision.zero_image_hidden(vision)
    latent_format = patcher.model.latent_format

    def encode_latents(pixels):
        return latent_format.process_in(vae.encode(pixels.movedim(1, -1)).float())  # (B, 4, h, w)

    def encode_image(pixels):
        out = vision.encode_image(pixels.movedim(1, -1))  # the host's 224 resize + centre crop + normalisation
        return out["image_embeds"].float(), out["penultimate_hidden_states"].float()

    embed_width = encode_image(torch.zeros(1, 3, 224, 224))[0].shape[-1]
    return FrozenModels(patcher=patcher, family=host_family(patcher), encode_latents=encode_latents,
                        encode_text=lambda texts: encode_texts(clip, texts), encode_image=encode_image,
                        zero_image_hidden=zero_hidden.float().cpu(), embed_width=embed_width,
                        vae=vae, clip=clip, clip_vision=vision)


def encode_texts(clip, texts) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The host's tokenizer and text encoder, one caption at a time, cut to one CLIP window."""
    contexts, pooled = [], []
    for text in texts:
        cond, pool = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        contexts.append(cond[:, :MAX_TEXT_TOKENS].float())  # (1, T, C)
        pooled.append(None if pool is None else pool.float())
    context = torch.cat(contexts)  # (B, T, C)
    return context, (None if pooled[0] is None else torch.cat(pooled))


def _no_encoder(*_):
    raise RuntimeError("this run loaded the UNet only (training from a complete cache): no encoders")
