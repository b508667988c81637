"""Tiled encoding of references far from square, and the CLIP vision enhancer (docs/inference.md#tiled-encoding).

``tile_layout`` brings a reference to a size made of square tiles and gives each tile's box and mask (so that each
tile's image prompt can act on its own part of the picture); ``merge_tile_hidden`` blends the patch tokens of an
image's tiles, laid out as one large grid and pooled back to the encoder's grid, into the full image's.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from .image_ops import resize_images

TILE = 256  # tile side in pixels (the encoder resizes each to its input); divides the usual latent sizes
MAX_TILES = 4  # along the long side: a longer reference is centre-cropped to 4 tiles
NEAR_SQUARE = (0.75, 1.33)  # h / w in this range: cropped square and cut into 2 x 2 tiles


@dataclass(frozen=True)
class TileLayout:
    image: torch.Tensor  # (n, H, W, 3) the reference brought to the tiles' size
    boxes: tuple[tuple[int, int], ...]  # (top, left) of each TILE x TILE tile, row by row
    masks: torch.Tensor  # (T, H, W): 1 inside tile t, 0 elsewhere


def _centre_crop(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = (image.shape[1] - h) // 2, (image.shape[2] - w) // 2
    return image[:, top:top + h, left:left + w]


def _starts(length: int) -> list[int]:
    """Tile starts along a side of ``length`` >= TILE: as few tiles as cover it, overlapping evenly."""
    count = math.ceil(length / TILE)
    overlap = (count * TILE - length) / (count - 1) if count > 1 else 0.0
    return [int(i * (TILE - overlap)) for i in range(count)]


def tile_layout(image: torch.Tensor) -> TileLayout:
    """(n, H, W, 3) -> the reference resized (Lanczos) so that its short side is one tile (near-square: cropped
    square, two tiles a side), at most MAX_TILES tiles long, and its tiles."""
    _, h, w, _ = image.shape
    if NEAR_SQUARE[0] < h / w < NEAR_SQUARE[1]:
        side = min(h, w)
        image = resize_images(_centre_crop(image, side, side), (2 * TILE, 2 * TILE), "lanczos")
    else:
        size = (TILE, int(TILE * w / h)) if h < w else (int(TILE * h / w), TILE)
        image = resize_images(image, size, "lanczos")
        image = _centre_crop(image, min(image.shape[1], MAX_TILES * TILE), min(image.shape[2], MAX_TILES * TILE))
    _, h, w, _ = image.shape
    boxes = tuple((top, left) for top in _starts(h) for left in _starts(w))
    masks = torch.zeros(len(boxes), h, w)
    for i, (top, left) in enumerate(boxes):
        masks[i, top:top + TILE, left:left + TILE] = 1.0
    return TileLayout(image, boxes, masks)


def tiles_of(layout: TileLayout) -> torch.Tensor:
    """(n, H, W, 3) -> (T * n, TILE, TILE, 3): every image's tile t, tile by tile."""
    return torch.cat([layout.image[:, top:top + TILE, left:left + TILE] for top, left in layout.boxes])


def split_grid(image: torch.Tensor, tiles: int) -> torch.Tensor:
    """(n, H, W, 3) -> (n * tiles², H // tiles, W // tiles, 3): each image cut into a tiles x tiles grid, row by
    row (the enhancer's tiles; the bottom and right remainders are dropped)."""
    n, h, w, c = image.shape
    th, tw = h // tiles, w // tiles
    cut = image[:, :th * tiles, :tw * tiles]
    return rearrange(cut, "n (i h) (j w) c -> (n i j) h w c", i=tiles, j=tiles)


def merge_tile_hidden(full: torch.Tensor, tile_hidden: torch.Tensor, tiles: int, ratio: float) -> torch.Tensor:
    """Hidden states of n images (n, 1 + g², W) and of their tiles (n * tiles², 1 + g², W) -> (n, 1 + g², W):
    ratio · full + (1 - ratio) · merged, where merged's class token is the mean of the tiles' and its patch tokens
    are the tiles' grids laid side by side (tiles·g a side) and average-pooled back to g x g. SigLIP's states
    have no class token: (n, g², W), merged from the patch tokens alone."""
    p = full.shape[1]
    first = 0 if math.isqrt(p) ** 2 == p else 1  # 1: a class token ahead of the g² patch tokens (CLIP)
    g = math.isqrt(p - first)
    per = rearrange(tile_hidden, "(n t) p w -> n t p w", t=tiles * tiles)  # (n, tiles², first + g², W)
    patches = per[:, :, first:]  # (n, tiles², g², W)
    grid = rearrange(patches, "n (i j) (y x) w -> n w (i y) (j x)", i=tiles, y=g)  # (n, W, tiles·g, tiles·g)
    pooled = rearrange(F.adaptive_avg_pool2d(grid, (g, g)), "n w y x -> n (y x) w")  # (n, g², W)
    if first:
        pooled = torch.cat([per[:, :, 0].mean(1, keepdim=True), pooled], dim=1)  # (n, 1 + g², W)
    return ratio * full + (1 - ratio) * pooled.to(full.dtype)


def merge_tile_embeds(full: torch.Tensor, tile_embeds: torch.Tensor, tiles: int, ratio: float) -> torch.Tensor:
    """Pooled embeddings (n, E) and their tiles' (n * tiles², E) -> ratio · full + (1 - ratio) · the tiles' mean."""
    mean = rearrange(tile_embeds, "(n t) e -> n t e", t=tiles * tiles).mean(1)  # (n, E)
    return ratio * full + (1 - ratio) * mean.to(full.dtype)
