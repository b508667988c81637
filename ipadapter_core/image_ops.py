"""Pixel-space helpers for reference images: IMAGE tensors are (n, H, W, 3) floats in [0, 1], as in the host."""
import torch
import torch.nn.functional as F

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


INTERPOLATIONS = ("bicubic", "lanczos", "bilinear", "nearest")
_LANCZOS_LOBES = 3


def _lanczos_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(out, in) weights of a Lanczos-3 resize along one axis; on downscaling the kernel is widened by the scale
    (antialiasing), and each row sums to 1."""
    scale = size_in / size_out
    centres = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale  # output pixel centres, input units
    x = (torch.arange(size_in, dtype=torch.float64)[None] + 0.5 - centres[:, None]) / max(scale, 1.0)  # (out, in)
    weights = torch.sinc(x) * torch.sinc(x / _LANCZOS_LOBES) * (x.abs() < _LANCZOS_LOBES)
    return (weights / weights.sum(1, keepdim=True)).float()


def resize_images(image: torch.Tensor, size, mode: str) -> torch.Tensor:
    """(n, H, W, 3) -> (n, h, w, 3), ``size`` = h = w or (h, w), with ``mode`` (INTERPOLATIONS); bicubic and
    bilinear antialiased as the host's encoder resize is."""
    choice("interpolation", mode, INTERPOLATIONS)
    h, w = (size, size) if isinstance(size, int) else size
    if mode == "lanczos":
        rows = _lanczos_matrix(image.shape[1], h).to(image)
        cols = _lanczos_matrix(image.shape[2], w).to(image)
        return torch.einsum("oh,nhwc,pw->nopc", rows, image, cols)  # (n, h, w, 3)
    pixels = image.movedim(-1, 1)  # (n, 3, H, W)
    if mode == "nearest":
        out = F.interpolate(pixels, size=(h, w), mode="nearest-exact")
    else:
        out = F.interpolate(pixels, size=(h, w), mode=mode, antialias=True, align_corners=False)
    return out.movedim(1, -1)


def sharpen(image: torch.Tensor, amount: float) -> torch.Tensor:
    """Contrast-adaptive sharpening of (n, H, W, 3) in [0, 1] by ``amount`` in [0, 1] (docs/inference.md#sharpening):
    each pixel minus w times its four neighbours (zero outside the image), renormalised, where w grows with the
    amount and shrinks where the 3x3 neighbourhood already has high contrast."""
    if amount == 0:
        return image
    padded = F.pad(image.movedim(-1, 1), (1, 1, 1, 1))  # (n, 3, H + 2, W + 2), zeros around
    h, w = image.shape[1:3]
    at = {(dy, dx): padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    cross = torch.stack([at[k] for k in ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0))])
    diagonal = torch.stack([at[k] for k in ((-1, -1), (-1, 1), (1, -1), (1, 1))])
    low = cross.amin(0).clamp_min(0) + diagonal.amin(0).clamp_min(0)
    high = cross.amax(0).clamp_max(1) + diagonal.amax(0).clamp_max(1)
    peak = -torch.sqrt(torch.minimum(low, 2 - high) / high) * (1 / 8 + amount * (1 / 5 - 1 / 8))
    neighbours = at[(-1, 0)] + at[(0, -1)] + at[(0, 1)] + at[(1, 0)]
    out = (neighbours * peak + at[(0, 0)]) / (1 + 4 * peak)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).clamp(0, 1).movedim(1, -1)
