"""CLIP vision encoding through the host's encoder: reference images -> an ImagePrompt (cond and uncond)."""
import weakref
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.utils

from ..ipadapter_core import (FIT_MODES, ImagePrompt, InputError, check_images, choice, finite_number,
                              square_images, with_default_uncond)
from ..ipadapter_core.checks import FRACTION_RANGE
from ..ipadapter_core.image_ops import INTERPOLATIONS, resize_images, sharpen

MAX_BATCH = 256  # the node's batch_size widget

_ZERO_IMAGE_HIDDEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def zero_image_hidden(clip_vision) -> torch.Tensor:
    """Penultimate hidden states (1, P, W) of the all-zero *normalised* pixel tensor (the mean-grey image), the
    reference's unconditional input (docs/inference.md#unconditional-image-tokens). Computed once per encoder."""
    cached = _ZERO_IMAGE_HIDDEN.get(clip_vision)
    if cached is None:
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        size = clip_vision.image_size
        pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)  # (1, 3, H, W), already normalised
        with torch.no_grad():  # a cached output with a graph would keep every weight cast alive (GBs)
            out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
        cached = out[1].to(comfy.model_management.intermediate_device())
        _ZERO_IMAGE_HIDDEN[clip_vision] = cached
    return cached


@dataclass(frozen=True)
class Prep:
    """How images are brought to the encoder's size: the host's own resize (bicubic, no sharpening: the default)
    or ours, with another interpolation and/or sharpening (docs/inference.md#sharpening)."""
    interpolation: str = "bicubic"
    sharpening: float = 0.0

    def __call__(self, chunk: torch.Tensor, size: int) -> torch.Tensor:
        if self.interpolation == "bicubic" and self.sharpening == 0:
            return chunk  # the host's encode_image resizes it
        return sharpen(resize_images(chunk[..., :3].float(), size, self.interpolation), self.sharpening)


def _encode(clip_vision, image: torch.Tensor, progress, fit: str, batch_size: int, prep: Prep = Prep()
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (n, H, W, 3) -> pooled embeds (n, E), penultimate hidden states (n, P, W), ``batch_size`` images at a
    time so that only one chunk's activations are ever held."""
    image = square_images(image, fit, fill=tuple(clip_vision.image_mean))
    n = image.shape[0]
    embeds = hidden = None
    for i in range(0, n, batch_size):
        chunk = prep(image[i:i + batch_size], clip_vision.image_size)
        out = clip_vision.encode_image(chunk, crop=fit != "squash")
        chunk_embeds, chunk_hidden = out["image_embeds"], out["penultimate_hidden_states"]
        if hidden is None:  # filled in place: no list of chunks and no concatenated copy of it
            embeds = chunk_embeds.new_empty((n, *chunk_embeds.shape[1:]))  # (n, E)
            hidden = chunk_hidden.new_empty((n, *chunk_hidden.shape[1:]))  # (n, P, W)
        embeds[i:i + batch_size], hidden[i:i + batch_size] = chunk_embeds, chunk_hidden
        progress.update(chunk_hidden.shape[0])
    return embeds, hidden


def check_prep(interpolation, sharpening) -> Prep:
    choice("interpolation", interpolation, INTERPOLATIONS)
    return Prep(interpolation, finite_number("sharpening", sharpening, *FRACTION_RANGE))


def check_inputs(clip_vision, image, negative_image, fit: str, batch_size: int) -> None:
    """Refused before any encoding: no encoder, empty or NaN/Inf images, unknown fit, batch size out of range."""
    if clip_vision is None or not hasattr(clip_vision, "encode_image"):
        raise InputError(f"clip_vision: expected a CLIP vision model, got {type(clip_vision).__name__}: connect "
                         "Load CLIP Vision")
    check_images("image", image)
    if negative_image is not None:
        check_images("negative_image", negative_image)
    choice("fit", fit, FIT_MODES)
    check_batch_size(batch_size)


def check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise InputError(f"batch_size is {batch_size!r}: give a whole number from 1 to {MAX_BATCH}")


def encode_image_prompt(clip_vision, image: torch.Tensor, negative_image: torch.Tensor | None = None,
                        fit: str = "center crop", batch_size: int = 8, interpolation: str = "bicubic",
                        sharpening: float = 0.0) -> ImagePrompt:
    check_inputs(clip_vision, image, negative_image, fit, batch_size)
    prep = check_prep(interpolation, sharpening)
    count = image.shape[0] + (0 if negative_image is None else negative_image.shape[0])
    progress = comfy.utils.ProgressBar(count)
    embeds, hidden = _encode(clip_vision, image, progress, fit, batch_size, prep)
    if negative_image is None:
        return with_default_uncond(embeds, hidden, zero_image_hidden(clip_vision))
    neg_embeds, neg_hidden = _encode(clip_vision, negative_image, progress, fit, batch_size, prep)
    n = embeds.shape[0]
    if neg_embeds.shape[0] not in (1, n):
        raise InputError(f"negative_image has {neg_embeds.shape[0]} images for {n} reference images: give one "
                         "negative image, or one per reference image")
    return ImagePrompt(embeds, hidden, neg_embeds.expand(n, -1), neg_hidden.expand(n, -1, -1))
