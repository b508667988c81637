"""Input checks shared by the nodes' up-front validation and their execution: each raises an InputError whose
one-line message names the input, what is wrong with it and the fix. Nothing here runs inside sampling."""
import math
from typing import Iterable, Mapping

import torch

from .errors import AdapterFileError, InputError


WEIGHT_RANGE = (-2.0, 5.0)  # the Apply nodes' weight widgets
FRACTION_RANGE = (0.0, 1.0)  # start_at / end_at, strengths


def shape(tensors: Mapping, key: str, missing: str | None = None) -> tuple[int, ...]:
    """The shape of ``tensors[key]`` (a tensor or anything with ``.shape``, meta tensors included). ``missing``:
    the AdapterFileError message (``{key}`` filled in) when the key is absent; KeyError without."""
    if missing is not None and key not in tensors:
        raise AdapterFileError(missing.format(key=key))
    return tuple(tensors[key].shape)


def finite_number(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """A number within [low, high] that is neither NaN nor infinite (the host's own range check lets NaN by)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}: {value!r} is not a number: give a number"
                         + (f" from {low} to {high}" if low is not None and high is not None else ""))
    if not math.isfinite(value):
        raise InputError(f"{name} is {value}: give a finite number"
                         + (f" from {low} to {high}" if low is not None and high is not None else ""))
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{name} is {value}, outside {low}…{high}: give a value in that range")
    return float(value)


def whole_number(name: str, value, low: int, high: int) -> int:
    """An int within [low, high] (a frame count or index)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} is {value!r}: give a whole number from {low} to {high}")
    return value


def choice(name: str, value, options) -> str:
    if value not in options:
        listed = ", ".join(map(str, options))
        if len(listed) > 200:  # a long list (the layer presets): the first ones, the rest are in the widget
            listed = ", ".join(map(str, list(options)[:8])) + f" and {len(options) - 8} more listed in the widget"
        raise InputError(f"{name}: {value!r} is not one of the options ({listed}): pick one")
    return value


def number_list(name: str, text: str, example: str = "1.0, 0.5") -> list[float]:
    """'1.0, 0.5' (commas or semicolons) -> [1.0, 0.5]; a bad entry is named with the expected form."""
    values = []
    for entry in (part.strip() for part in str(text).replace(";", ",").split(",")):
        if not entry:
            continue
        try:
            value = float(entry)
        except ValueError:
            raise InputError(f"{name}: '{entry}' is not a number: give numbers separated by commas, "
                             f"e.g. '{example}'") from None
        if not math.isfinite(value):
            raise InputError(f"{name}: '{entry}' is not a finite number: give finite numbers, e.g. '{example}'")
        values.append(value)
    return values


CHECK_ROWS = 16  # rows of a batch checked at a time: the check's own memory stays that of 16 rows


def _first_non_finite(tensor: torch.Tensor) -> tuple[int, int] | None:
    """(count of NaN/Inf values, flat index of the first) or None when all are finite; a few rows at a time, and
    a broadcast view (the default negative of every frame) through the one row it holds."""
    if tensor.ndim == 0:
        tensor = tensor.reshape(1)
    rows = tensor.shape[0]
    if rows > 1 and tensor.stride(0) == 0:
        bad = _first_non_finite(tensor[:1])
        return None if bad is None else (bad[0] * rows, bad[1])
    count, first, row_size = 0, None, tensor[0].numel() if rows else 0
    for start in range(0, rows, CHECK_ROWS):
        bad = ~torch.isfinite(tensor[start:start + CHECK_ROWS])
        found = int(bad.sum())
        if found and first is None:
            first = start * row_size + int(bad.flatten().nonzero()[0])
        count += found
    return None if count == 0 else (count, first)


def check_images(name: str, image) -> torch.Tensor:
    """An IMAGE: a (B, H, W, C) float tensor, B >= 1, C 3 or 4 (alpha ignored), every value finite."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"{name}: expected an IMAGE batch (B, H, W, 3), got {shape}: connect an image "
                         "(Load Image, or a node that outputs IMAGE)")
    if image.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (0 images): connect at least one image")
    if min(image.shape[1:3]) == 0:
        raise InputError(f"{name} has size {image.shape[2]}×{image.shape[1]}: give images with pixels")
    if not image.is_floating_point():
        raise InputError(f"{name} holds {image.dtype} values: an IMAGE holds floats in 0…1")
    bad = _first_non_finite(image)
    if bad is not None:
        frame = bad[1] // (image[0].numel())
        raise InputError(f"{name} has {bad[0]} NaN/Inf pixel values (first in image {frame}): fix or replace "
                         "the node that made it")
    return image


def check_mask(name: str, value) -> torch.Tensor:
    """A MASK: (H, W) or (M, H, W) floats, every value finite, not empty."""
    if not isinstance(value, torch.Tensor) or value.ndim not in (2, 3):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"{name}: expected a MASK (H, W) or (M, H, W), got {shape}: connect a MASK")
    if value.numel() == 0:
        raise InputError(f"{name} is empty ({tuple(value.shape)}): connect a mask with pixels")
    if not value.is_floating_point():
        value = value.float()
    bad = _first_non_finite(value)
    if bad is not None:
        raise InputError(f"{name} has {bad[0]} NaN/Inf values: masks hold numbers in 0…1; fix the node that "
                         "made it")
    return value


FILE_FIX = "the file is damaged (or was saved from a diverged training run); use another copy"


def finite_tensors(what: str, tensors: Iterable[tuple[str, torch.Tensor]], fix: str = FILE_FIX,
                   error: type = AdapterFileError) -> None:
    """Every tensor finite, or an error naming the first bad key and how many values are bad."""
    for key, tensor in tensors:
        if not tensor.is_floating_point() or tensor.is_meta:
            continue
        bad = _first_non_finite(tensor)
        if bad is not None:
            raise error(f"{what}: '{key}' has {bad[0]} NaN/Inf value(s) of {tensor.numel()}: {fix}")


def check_filename_prefix(prefix: str) -> str:
    """A file name prefix under output/image_prompts/: not empty, relative, no '..' (the host refuses paths outside
    its output folder, with a less helpful message)."""
    text = str(prefix).strip()
    if not text:
        raise InputError("filename_prefix is empty: give a name such as 'image_prompt' (subfolders with '/')")
    parts = text.replace("\\", "/").split("/")
    if text.startswith(("/", "\\")) or ".." in parts or ":" in text or "\x00" in text:
        raise InputError(f"filename_prefix {text!r} leaves output/image_prompts/: give a relative name without "
                         "'..', such as 'faces/portrait'")
    return text
