"""CLIP vision encoding through the host's encoder: reference images -> an ImagePrompt (cond and uncond)."""
import copy
import weakref
from dataclasses import dataclass, replace

import torch

import comfy.model_management
import comfy.utils

from ..ipadapter_core import (FIT_MODES, ImagePrompt, InputError, check_images, choice, finite_number,
                              square_images, with_default_uncond)
from ..ipadapter_core.checks import FRACTION_RANGE
from ..ipadapter_core import tiles
from ..ipadapter_core.image_ops import INTERPOLATIONS, resize_images, sharpen
from .siglip_head import pooling_head

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


def _head_on_device(clip_vision, pooled: bool):
    """SigLIP's pooling head on the encoder's load device (float32), or None: no head found, or not SigLIP
    (docs/inference.md#siglip-pooled-embedding). A copy when moved: the cached head stays on the CPU."""
    head = pooling_head(clip_vision) if pooled else None
    device = torch.device(clip_vision.load_device)
    if head is None or head.probe.device == device:
        return head
    return copy.deepcopy(head).to(device)


def _pool(head, out) -> torch.Tensor:
    """SigLIP's pooled embedding (n, W) of a chunk's post-LayerNorm token states (n, N, W), in float32."""
    states = out["last_hidden_state"]
    with torch.no_grad():
        pooled = head(states.to(head.probe.device, torch.float32))  # (n, W)
    return pooled.to(comfy.model_management.intermediate_device())


def _encode(clip_vision, image: torch.Tensor, progress, fit: str, batch_size: int, prep: Prep = Prep(),
            pooled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (n, H, W, 3) -> pooled embeds (n, E), penultimate hidden states (n, P, W), ``batch_size`` images at a
    time so that only one chunk's activations are ever held. SigLIP's embeds are its pooling head's output when
    the head is found (otherwise the host's token states (n, N, W)); ``pooled=False``: not computed."""
    image = square_images(image, fit, fill=tuple(clip_vision.image_mean))
    n = image.shape[0]
    embeds = hidden = None
    head = _head_on_device(clip_vision, pooled)
    for i in range(0, n, batch_size):
        chunk = prep(image[i:i + batch_size], clip_vision.image_size)
        out = clip_vision.encode_image(chunk, crop=fit != "squash")
        chunk_embeds = out["image_embeds"] if head is None else _pool(head, out)
        chunk_hidden = out["penultimate_hidden_states"]
        if hidden is None:  # filled in place: no list of chunks and no concatenated copy of it
            embeds = chunk_embeds.new_empty((n, *chunk_embeds.shape[1:]))  # (n, E)
            hidden = chunk_hidden.new_empty((n, *chunk_hidden.shape[1:]))  # (n, P, W)
        embeds[i:i + batch_size], hidden[i:i + batch_size] = chunk_embeds, chunk_hidden
        progress.update(chunk_hidden.shape[0])
    return embeds, hidden


def encode_hidden(clip_vision, image: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Penultimate hidden states (n, P, W) of square images (n, S, S, 3), ``batch_size`` at a time."""
    return _encode(clip_vision, image, comfy.utils.ProgressBar(image.shape[0]), "center crop", batch_size,
                   pooled=False)[1]


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


TILE_MODES = ("tiles", "enhancer")
MAX_ENHANCE_TILES = 16


@dataclass(frozen=True)
class TiledPrompt:
    prompt: ImagePrompt
    masks: torch.Tensor  # (T, H, W): each tile's part of the picture (enhancer: one full mask)
    tiles: torch.Tensor  # (T * n, h, w, 3): the images encoded as tiles


def check_tiled(tile_mode, enhance_ratio, enhance_tiles) -> None:
    choice("tile_mode", tile_mode, TILE_MODES)
    finite_number("enhance_ratio", enhance_ratio, *FRACTION_RANGE)
    if isinstance(enhance_tiles, bool) or not isinstance(enhance_tiles, int) or not \
            2 <= enhance_tiles <= MAX_ENHANCE_TILES:
        raise InputError(f"enhance_tiles is {enhance_tiles!r}: give a whole number from 2 to {MAX_ENHANCE_TILES}")


def _negative(clip_vision, negative_image, embeds, hidden, progress, batch_size, prep, repeat=1) -> ImagePrompt:
    """The prompt of ``embeds``/``hidden`` (n·repeat images) with the default negative or ``negative_image`` (one,
    or one per reference image: repeated for each of the ``repeat`` tiles)."""
    if negative_image is None:
        return with_default_uncond(embeds, hidden, zero_image_hidden(clip_vision))
    neg_embeds, neg_hidden = _encode(clip_vision, negative_image, progress, "center crop", batch_size, prep)
    n = embeds.shape[0] // repeat
    if neg_embeds.shape[0] not in (1, n):
        raise InputError(f"negative_image has {neg_embeds.shape[0]} images for {n} reference images: give one "
                         "negative image, or one per reference image")
    if neg_embeds.shape[0] == n and repeat > 1:
        neg_embeds, neg_hidden = neg_embeds.repeat(repeat, 1), neg_hidden.repeat(repeat, 1, 1)  # tile by tile
    m = embeds.shape[0]
    return ImagePrompt(embeds, hidden, neg_embeds.expand(m, -1), neg_hidden.expand(m, -1, -1))


def encode_tiled(clip_vision, image, negative_image=None, tile_mode: str = "tiles", enhance_ratio: float = 1.0,
                 enhance_tiles: int = 2, sharpening: float = 0.0, batch_size: int = 8) -> TiledPrompt:
    """``tiles``: the reference cut into square tiles, one image per tile, each acting on its own region of the
    picture; ``enhancer``: the full image's features blended with its tiles' (docs/inference.md#tiled-encoding)."""
    check_inputs(clip_vision, image, negative_image, "center crop", batch_size)
    check_tiled(tile_mode, enhance_ratio, enhance_tiles)
    prep = check_prep("bicubic", sharpening)
    progress = comfy.utils.ProgressBar(image.shape[0] * (1 + enhance_tiles ** 2))
    n = image.shape[0]
    if tile_mode == "tiles":
        layout = tiles.tile_layout(image[..., :3].float())
        pieces = tiles.tiles_of(layout)  # (T * n, TILE, TILE, 3), tile by tile
        embeds, hidden = _encode(clip_vision, pieces, progress, "center crop", batch_size, prep)
        count = len(layout.boxes)
        prompt = _negative(clip_vision, negative_image, embeds, hidden, progress, batch_size, prep, count)
        regions = layout.masks.repeat_interleave(n, 0)  # (T * n, H, W)
        return TiledPrompt(replace(prompt, regions=regions), layout.masks, pieces)
    square = square_images(image, "center crop")
    embeds, hidden = _encode(clip_vision, square, progress, "center crop", batch_size, prep)
    pieces = tiles.split_grid(square, enhance_tiles)  # (n * tiles², h, w, 3)
    tile_embeds, tile_hidden = _encode(clip_vision, pieces, progress, "center crop", batch_size, prep)
    embeds = tiles.merge_tile_embeds(embeds, tile_embeds, enhance_tiles, enhance_ratio)
    hidden = tiles.merge_tile_hidden(hidden, tile_hidden, enhance_tiles, enhance_ratio)
    prompt = _negative(clip_vision, negative_image, embeds, hidden, progress, batch_size, prep)
    return TiledPrompt(prompt, torch.ones(1, *square.shape[1:3]), pieces)
