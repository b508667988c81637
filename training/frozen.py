"""The frozen models (UNet, VAE, text encoder, image encoder), as the host loads them, behind four calls.

``load_frozen`` is a thin layer over the host's own loaders (``host/loaders.py``:
``comfy.sd.load_checkpoint_guess_config``, ``comfy.clip_vision.load``); anything else that fills a
``FrozenModels`` (the tests' tiny models) trains the same.
"""
import ctypes
import functools
import gc
import importlib
import logging
import sys
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
    vae / clip / clip_vision: the host objects, for validation images through the nodes (None: no validation).
    source_weights: {patch key: (Wk, Wv)} as the checkpoint file stores them, or None (copy from the UNet)."""
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
    source_weights: dict | None = None

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


def load_frozen(checkpoint: str, clip_vision: str | None, dtype: torch.dtype | None, encoders: bool = True
                ) -> FrozenModels:
    """An SD1.5/SDXL single-file checkpoint and a CLIP vision file, loaded by the host's own loaders.
    ``encoders=False``: the UNet only (training from a cache needs nothing else).

    Memory: while a loader copies a file into its model, the file's pages (mapped) and the new weights are both
    resident, so each file part is loaded on its own and the largest first: the UNet, then the image encoder, then
    VAE + text encoder from a second pass over the checkpoint; freed memory is handed back after each. The image
    encoder stays in the host's dtype (fp16). Nothing here keeps an autograd graph."""
    from ..host import loaders
    from .objective import prediction_type

    patcher, source = _load_unet(checkpoint, dtype)
    prediction_type(patcher.model.model_sampling)  # UnsupportedModel (flow, x0, EDM ...) before the encoders load
    if not encoders:
        return FrozenModels(patcher=patcher, family=host_family(patcher), encode_latents=_no_encoder,
                            encode_text=_no_encoder, encode_image=_no_encoder, zero_image_hidden=None,
                            embed_width=0, source_weights=source)
    vision = loaders.load_clip_vision(clip_vision)
    release_memory()
    clip, vae = loaders.load_text_and_vae(checkpoint, dtype)
    release_memory()
    frozen = _with_encoders(patcher, clip, vae, vision)
    frozen.source_weights = source
    return frozen


def _load_unet(checkpoint: str, dtype: torch.dtype | None):
    """The UNet stored in ``dtype``, and every layer's Wk, Wv as the file stores them (for a fresh adapter's
    W'k, W'v, copied at the checkpoint's own precision as the reference does). Read from the file when it names
    them as the host does; otherwise the UNet is loaded as stored and cast later (``FrozenModels.to``)."""
    from ..host import loaders
    from ..host.unet import attention_weights_in_file
    patcher = loaders.load_unet(checkpoint, dtype or torch.float32)  # no mixed precision: an fp32 UNet
    release_memory()
    if dtype in (None, torch.float32):
        return patcher, None
    source = attention_weights_in_file(checkpoint, patcher)
    if source is None:
        log.info("the checkpoint's attention weights are not named as the host names them: loading its UNet "
                 "as stored, to be cast after the adapter copies them")
        del patcher
        release_memory()
        patcher = loaders.load_unet(checkpoint, torch.float32)
    return patcher, source


def _with_encoders(patcher, clip, vae, vision) -> FrozenModels:
    from ..host.vision import zero_image_hidden
    latent_format = patcher.model.latent_format

    @torch.no_grad()
    def encode_latents(pixels):
        return latent_format.process_in(vae.encode(pixels.movedim(1, -1)).float())  # (B, 4, h, w)

    @torch.no_grad()
    def encode_image(pixels):
        out = vision.encode_image(pixels.movedim(1, -1))  # the host's 224 resize + centre crop + normalisation
        return out["image_embeds"].float(), out["penultimate_hidden_states"].float()

    embed_width = encode_image(torch.zeros(1, 3, 224, 224))[0].shape[-1]
    return FrozenModels(patcher=patcher, family=host_family(patcher), encode_latents=encode_latents,
                        encode_text=torch.no_grad()(lambda texts: encode_texts(clip, texts)),
                        encode_image=encode_image, zero_image_hidden=zero_image_hidden(vision).float().cpu(),
                        embed_width=embed_width, vae=vae, clip=clip, clip_vision=vision)


def release_memory() -> None:
    """Collect garbage and hand the allocator's free heap back to the system (glibc's malloc_trim), so that
    memory freed after a load does not stay counted in the process's resident size."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl)
        return None


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
