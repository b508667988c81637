"""Pixel-space helpers for reference images: IMAGE tensors are (n, H, W, 3) floats in [0, 1], as in the host."""
import torch

from .checks import FRACTION_RANGE, check_images, choice, finite_number

FIT_MODES = ("center crop", "top/left crop", "bottom/right crop", "pad", "squash")
NOISE_KINDS = ("fade", "dissolve", "gaussian", "shuffle")


def square_images(image: torch.Tensor, mode: str, fill=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """Make non-square references square before the encoder's resize.

    crops keep a square of the short side at the centre, the top/left or the bottom/right end of the long side;
    ``pad`` extends the short side on both ends with ``fill`` (an RGB colour); ``squash`` returns the image as it
    is (the encoder's own resize then squashes it to a square)."""
    if mode not in FIT_MODES:
        raise ValueError(f"unknown fit mode {mode!r}; choose one of {', '.join(FIT_MODES)}")
    n, h, w, c = image.shape
    if h == w or mode == "squash":
        return image
    if mode == "pad":
        side = max(h, w)
        out = torch.empty(n, side, side, c, dtype=image.dtype, device=image.device)  # (n, S, S, 3)
        out[:] = torch.tensor(fill, dtype=image.dtype, device=image.device)[:c]
        top, left = (side - h) // 2, (side - w) // 2
        out[:, top:top + h, left:left + w] = image
        return out
    side = min(h, w)
    extra = max(h, w) - side
    offset = {"center crop": extra // 2, "top/left crop": 0, "bottom/right crop": extra}[mode]
    if h > w:
        return image[:, offset:offset + side]
    return image[:, :, offset:offset + side]


def noise_image(kind: str, strength: float, seed: int, image: torch.Tensor | None = None,
                size: int = 224) -> torch.Tensor:
    """A negative image for EncodeImagePrompt: the reference (or mean grey) degraded towards noise.

    fade: blend towards uniform noise by ``strength``; dissolve: a ``strength`` fraction of the pixels replaced by
    noise; gaussian: grey-centred gaussian noise of standard deviation ``strength`` / 2 added; shuffle: the pixels
    moved to random places, blended in by ``strength``. Same seed, same image."""
    choice("kind", kind, NOISE_KINDS)
    finite_number("strength", strength, *FRACTION_RANGE)
    if image is not None:
        check_images("image", image)
    base = torch.full((1, size, size, 3), 0.5) if image is None else image[..., :3].float().cpu()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(base.shape, generator=gen)  # (n, H, W, 3)
    if kind == "fade":
        out = torch.lerp(base, noise, strength)
    elif kind == "dissolve":
        picked = torch.rand(base.shape[:3], generator=gen)[..., None] < strength  # (n, H, W, 1)
        out = torch.where(picked, noise, base)
    elif kind == "gaussian":
        out = base + torch.randn(base.shape, generator=gen) * (strength / 2)
    else:
        n, h, w, c = base.shape
        order = torch.randperm(h * w, generator=gen)
        shuffled = base.reshape(n, h * w, c)[:, order].reshape(n, h, w, c)  # (n, H, W, 3)
        out = torch.lerp(base, shuffled, strength)
    return out.clamp(0, 1)
