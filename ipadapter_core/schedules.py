"""Per-frame weight schedules (IPADAPTER_FRAME_WEIGHTS) and the two-image crossfade batches, as data.

A schedule is one multiplier of the adapter's weight per frame, picked by absolute frame during sampling like
every per-frame input (frame f reads entry min(f, len - 1)). Everything here runs before sampling.
"""
import math
from dataclasses import dataclass

import torch

from .checks import WEIGHT_RANGE, check_images, finite_number, number_list, whole_number
from .errors import InputError

TIMINGS = ("custom", "linear", "ease in", "ease out", "ease in-out")
CROSSFADE_METHODS = ("full batch", "shift batches", "alternate batches")
MAX_FRAMES = 9999  # the frame widgets' maximum

_EASE = {
    "linear": lambda t: t,
    "ease in": lambda t: 1.0 - math.cos(t * math.pi / 2),  # slow start
    "ease out": lambda t: math.sin(t * math.pi / 2),  # slow end
    "ease in-out": lambda t: (1.0 - math.cos(t * math.pi)) / 2,
}


@dataclass(frozen=True)
class FrameWeights:
    """The IPADAPTER_FRAME_WEIGHTS socket value: one weight multiplier per frame, frame 0 first."""
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.values)

    def inverted(self) -> "FrameWeights":
        """max + min - w: the complement within the schedule's own range, so that w and its inverse sum to the
        same total on every frame (a crossfade); '1, 0' becomes '0, 1'."""
        high, low = max(self.values), min(self.values)
        return FrameWeights(tuple(high + low - w for w in self.values))


def check_frame_weights(name: str, value) -> FrameWeights:
    """A FrameWeights (or a list of numbers from a script): not empty, every value finite and in the weight range."""
    values = value.values if isinstance(value, FrameWeights) else value
    if not isinstance(values, (list, tuple)) or isinstance(value, str):
        raise InputError(f"{name}: expected IP-Adapter frame weights, got {type(value).__name__}: connect "
                         "IP-Adapter Frame Weights")
    if not values:
        raise InputError(f"{name} is empty (0 frames): give at least one weight")
    for i, w in enumerate(values):
        finite_number(f"{name} (frame {i})", w, *WEIGHT_RANGE)
    return value if isinstance(value, FrameWeights) else FrameWeights(tuple(float(w) for w in values))


def check_curve(weights: str, timing: str, frames: int, start_frame: int, end_frame: int) -> list[float]:
    """The node's widgets checked; the numbers of the ``weights`` text."""
    values = number_list("weights", weights)
    if not values:
        raise InputError("weights is empty: give the weight of every frame ('custom'), or the first and last "
                         "weights of the curve, e.g. '1.0, 0.0'")
    for w in values:
        finite_number("weights", w, *WEIGHT_RANGE)
    if timing not in TIMINGS:
        raise InputError(f"timing: {timing!r} is not one of the options ({', '.join(TIMINGS)}): pick one")
    for name, value, low in (("frames", frames, 1), ("start_frame", start_frame, 0), ("end_frame", end_frame, 1)):
        whole_number(name, value, low, MAX_FRAMES)
    if timing != "custom" and min(end_frame, frames) <= start_frame:
        raise InputError(f"start_frame {start_frame} is not before end_frame {min(end_frame, frames)} (end_frame, "
                         f"at most frames): the curve needs at least one frame; lower start_frame or raise "
                         "end_frame/frames")
    return values


def frame_curve(weights: str, timing: str = "linear", frames: int = 16, start_frame: int = 0,
                end_frame: int = MAX_FRAMES) -> FrameWeights:
    """``custom``: the listed weights, one per frame. A curve: ``frames`` weights; frames before ``start_frame``
    hold the first listed weight, frames from ``start_frame`` to ``end_frame`` - 1 (end_frame at most
    ``frames``) go from the first to the last listed weight along the timing, later frames hold the last."""
    values = check_curve(weights, timing, frames, start_frame, end_frame)
    if timing == "custom":
        return FrameWeights(tuple(values))
    first, last = values[0], values[-1]
    end = min(end_frame, frames)
    span = end - start_frame
    ease = _EASE[timing]
    curve = [first + (last - first) * (ease(i / (span - 1)) if span > 1 else 1.0) for i in range(span)]
    return FrameWeights(tuple([first] * start_frame + curve + [last] * (frames - end)))


def crossfade(images: torch.Tensor, weights: FrameWeights, method: str, add_starting_frames: int = 0,
              add_ending_frames: int = 0):
    """Reference images (n, H, W, C) and one segment's weights (S frames) -> (weights, inverted weights, image_1,
    image_2), each one entry per frame:

    - ``full batch``: image i holds frames i*S ... i*S + S - 1 in image_1 with the segment's weights (image_2 is
      the same batch);
    - ``shift batches``: n - 1 segments; in segment i image_1 is image i (the weights) and image_2 image i + 1
      (the inverted weights): with weights going 1 -> 0 each segment fades from image i to image i + 1;
    - ``alternate batches``: the same fades, with image_1 holding the even images and image_2 the odd ones, the
      weights alternating between the segment and its inverse, so an image stays in one batch across both of its
      fades.

    ``add_starting_frames`` / ``add_ending_frames`` frames of the first / last image and weight are added."""
    check_images("image", images)
    segment = list(check_frame_weights("frame_weights", weights).values)
    for name, value in (("add_starting_frames", add_starting_frames), ("add_ending_frames", add_ending_frames)):
        whole_number(name, value, 0, MAX_FRAMES)
    count = images.shape[0]
    inverse = list(FrameWeights(tuple(segment)).inverted().values)
    if method == "full batch":
        order_1 = order_2 = [i for i in range(count) for _ in segment]
        values = segment * count
    elif method in ("shift batches", "alternate batches"):
        if count < 2:
            raise InputError(f"image: '{method}' fades from each image to the next and needs at least 2 images, "
                             "got 1: give a batch of 2 or more images (or use 'full batch')")
        fades = range(count - 1)
        if method == "shift batches":
            pairs, values = [(i, i + 1) for i in fades], segment * (count - 1)
        else:  # even images in image_1, odd in image_2: fade i goes from image i to image i + 1
            pairs = [(i, i + 1) if i % 2 == 0 else (i + 1, i) for i in fades]
            values = [w for i in fades for w in (segment if i % 2 == 0 else inverse)]
        order_1 = [a for a, _ in pairs for _ in segment]
        order_2 = [b for _, b in pairs for _ in segment]
    else:
        raise InputError(f"method: {method!r} is not one of the options ({', '.join(CROSSFADE_METHODS)}): pick one")
    return _padded(images, values, order_1, order_2, add_starting_frames, add_ending_frames)


def _padded(images, values, order_1, order_2, start: int, end: int):
    """The frame lists with ``start`` frames of the first and ``end`` of the last entry added; image batches
    gathered (one image per frame)."""
    values = [values[0]] * start + values + [values[-1]] * end
    last = images.shape[0] - 1
    order_1 = [0] * start + order_1 + [last] * end
    order_2 = [0] * start + order_2 + [last] * end
    schedule = FrameWeights(tuple(values))
    image_1 = images[torch.tensor(order_1)]
    image_2 = image_1 if order_2 == order_1 else images[torch.tensor(order_2)]
    return schedule, schedule.inverted(), image_1, image_2
