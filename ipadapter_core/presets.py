"""Per-layer weight presets and weight curves over the sampling range, as data.

Everything here resolves to plain numbers before sampling: ``layer_weights`` gives {layer N: weight} for the layers
an adapter acts on (layers left out get no image branch at all), ``curve_values`` gives the weight multiplier at
points of the sampling range. The attention patch only looks these up.
"""
import math
import re
from typing import Callable, Sequence

from .errors import IPAdapterError
from .layers import LAYOUTS, LayerSite

# Block -> multiplier. SDXL: InstantStyle's blocks (style = output 1, composition = input 8). SD1.5 has no published
# equivalent; these are the widely used heuristic (docs/layers.md#style-and-composition-blocks).
STYLE_BLOCKS: dict[str, dict[tuple[str, int], float]] = {
    "sdxl": {("output", 1): 1.0},
    "sd15": {("input", 1): 1.0, ("input", 2): 1.0, ("input", 4): 1.0, ("input", 5): 1.0,
             **{("output", i): 1.0 for i in range(5, 12)}},
}
COMPOSITION_BLOCKS: dict[str, dict[tuple[str, int], float]] = {
    "sdxl": {("input", 8): 1.0},
    "sd15": {("input", 8): 1.0, ("input", 7): 0.25},
}

# The first eight are this extension's own; the rest compute the weight types of the ComfyUI_IPAdapter_plus
# extension, by block (docs/layers.md#the-incumbents-weight-types).
LAYER_PRESETS = ("linear", "ease in", "ease out", "ease in-out", "style transfer", "composition",
                 "style and composition", "custom",
                 "ease in (incumbent)", "ease out (incumbent)", "ease in-out (incumbent)", "reverse in-out",
                 "weak input", "weak middle", "weak output", "strong middle", "strong style transfer",
                 "strong style and composition", "style transfer precise", "composition precise")
# Its weight_type strings -> the preset computing the same weight per block.
INCUMBENT_WEIGHT_TYPES: dict[str, str] = {
    "linear": "linear", "ease in": "ease in (incumbent)", "ease out": "ease out (incumbent)",
    "ease in-out": "ease in-out (incumbent)", "reverse in-out": "reverse in-out", "weak input": "weak input",
    "weak output": "weak output", "weak middle": "weak middle", "strong middle": "strong middle",
    "style transfer": "style transfer", "composition": "composition", "strong style transfer": "strong style transfer",
    "style and composition": "style and composition", "style transfer precise": "style transfer precise",
    "composition precise": "composition precise",
}
CURVES = ("constant", "ramp up", "ramp down", "smooth up", "smooth down")
_FLOOR = 0.05  # the smallest multiplier of the depth curves: every layer keeps a little of the image prompt

_DEPTH_CURVES = {
    "linear": lambda t: 1.0,
    "ease in": lambda t: _FLOOR + (1 - _FLOOR) * t * t,  # weak near the input, full at the output
    "ease out": lambda t: _FLOOR + (1 - _FLOOR) * (1 - t) * (1 - t),  # full at the input, weak at the output
    "ease in-out": lambda t: _FLOOR + (1 - _FLOOR) * math.sin(math.pi * t),  # full around the middle block
}
_TIME_CURVES = {
    "constant": lambda t: 1.0,
    "ramp up": lambda t: t,
    "ramp down": lambda t: 1.0 - t,
    "smooth up": lambda t: t * t * (3 - 2 * t),
    "smooth down": lambda t: 1.0 - t * t * (3 - 2 * t),
}


def forward_order(family: str) -> tuple[LayerSite, ...]:
    """The layers in the order the UNet runs them: input blocks, middle block, output blocks."""
    rank = {"input": 0, "middle": 1, "output": 2}
    return tuple(sorted(LAYOUTS[family], key=lambda s: (rank[s.key[0]], s.key[1], s.key[2])))


def _blocks(family: str, table: dict[tuple[str, int], float], weight: float) -> dict[int, float]:
    return {s.n: weight * table[s.key[:2]] for s in LAYOUTS[family] if s.key[:2] in table}


def run_blocks(family: str) -> tuple[tuple[str, int], ...]:
    """The blocks holding cross-attention, in the order the UNet runs them (input, middle, output). A block's
    position here is the incumbent's layer index t (docs/layers.md#the-incumbents-weight-types)."""
    return tuple(dict.fromkeys(s.key[:2] for s in forward_order(family)))


_WEAK = 0.2  # the incumbent's multiplier of a weakened block group
_OTHER = 0.1  # "composition precise": the blocks that are neither style nor composition
# Depth curves over the block position t of n blocks.
_INCUMBENT_CURVES = {
    "ease in (incumbent)": lambda t, n: _FLOOR + (1 - _FLOOR) * (1 - t / n),  # full at the input
    "ease out (incumbent)": lambda t, n: _FLOOR + (1 - _FLOOR) * t / n,  # full at the output
    "ease in-out (incumbent)": lambda t, n: _FLOOR + (1 - _FLOOR) * (1 - abs(t - n / 2) / (n / 2)),
    "reverse in-out": lambda t, n: _FLOOR + (1 - _FLOOR) * abs(t - n / 2) / (n / 2),
}
_WEAK_GROUPS = {"weak input": {"input"}, "weak middle": {"middle"}, "weak output": {"output"},
                "strong middle": {"input", "output"}}
_TABLE_PRESETS = ("strong style transfer", "strong style and composition", "style transfer precise",
                  "composition precise")


def _incumbent_blocks(family: str, preset: str, weight: float, composition_weight: float
                      ) -> dict[tuple[str, int], float]:
    """Block -> weight of the incumbent's weight types (they weight whole blocks, never single transformers)."""
    blocks = run_blocks(family)
    style, composition = STYLE_BLOCKS[family], COMPOSITION_BLOCKS[family]
    if preset in _INCUMBENT_CURVES:
        return {b: weight * _INCUMBENT_CURVES[preset](t, len(blocks)) for t, b in enumerate(blocks)}
    if preset in _WEAK_GROUPS:
        return {b: weight * (_WEAK if b[0] in _WEAK_GROUPS[preset] else 1.0) for b in blocks}
    if preset == "strong style transfer":  # every block but the composition blocks
        return {b: weight for b in blocks if b not in composition}
    if preset == "strong style and composition":  # the composition blocks at composition_weight, unscaled
        return {b: composition_weight if b in composition else weight for b in blocks}
    if preset == "style transfer precise":
        return {**{b: weight * m for b, m in composition.items()}, **{b: weight * m for b, m in style.items()}}
    if preset == "composition precise":
        return {b: weight * composition.get(b, style.get(b, _OTHER)) for b in blocks}
    raise IPAdapterError(f"unknown layer weight preset {preset!r}; choose one of {', '.join(LAYER_PRESETS)}")


def swapped_layers(family: str, preset: str) -> frozenset[int]:
    """Layers whose cond rows get zero image tokens and whose uncond rows get the cond tokens (the "precise"
    presets): there CFG steers away from the reference. docs/layers.md#precise-presets."""
    if preset == "style transfer precise":
        blocks = set(COMPOSITION_BLOCKS[family])
    elif preset == "composition precise":
        blocks = set(run_blocks(family)) - set(COMPOSITION_BLOCKS[family])
    else:
        return frozenset()
    return frozenset(s.n for s in LAYOUTS[family] if s.key[:2] in blocks)


def layer_weights(family: str, preset: str, weight: float, *, composition_weight: float = 1.0,
                  custom: str = "") -> dict[int, float]:
    """{layer N: weight} of the layers the adapter acts on; layers with weight 0 are left out."""
    if preset in _DEPTH_CURVES:
        order = forward_order(family)
        last = max(len(order) - 1, 1)
        out = {s.n: weight * _DEPTH_CURVES[preset](i / last) for i, s in enumerate(order)}
    elif preset == "style transfer":
        out = _blocks(family, STYLE_BLOCKS[family], weight)
    elif preset == "composition":
        out = _blocks(family, COMPOSITION_BLOCKS[family], weight)
    elif preset == "style and composition":
        out = {**_blocks(family, COMPOSITION_BLOCKS[family], composition_weight),
               **_blocks(family, STYLE_BLOCKS[family], weight)}
    elif preset == "custom":
        out = {n: weight * w for n, w in parse_custom_weights(family, custom).items()}
    elif preset in _INCUMBENT_CURVES or preset in _WEAK_GROUPS or preset in _TABLE_PRESETS:
        table = _incumbent_blocks(family, preset, weight, composition_weight)
        out = {s.n: table[s.key[:2]] for s in LAYOUTS[family] if s.key[:2] in table}
    else:
        raise IPAdapterError(f"unknown layer weight preset {preset!r}; choose one of {', '.join(LAYER_PRESETS)}")
    return {n: w for n, w in sorted(out.items()) if w != 0.0}


def parse_custom_weights(family: str, text: str) -> dict[int, float]:
    """Custom per-layer multipliers, one of two forms:

    - a comma-separated list with one number per layer, in the weight file's order (N = 1, 3, 5, ...);
    - ``name=value`` entries, comma-separated, where name is a layer number (``69``), a block (``input 8``,
      ``output 1``) or ``middle``; layers not named get 0.
    """
    sites = LAYOUTS[family]
    return parse_custom_entries(
        text, [s.n for s in sites], lambda name: _named_layers(sites, name.lower()), unnamed=0.0,
        empty="custom_layer_weights is empty: give one number per layer, or entries like 'output 1=1.0, input 8=0.5'",
        count=lambda given: (f"custom_layer_weights lists {given} numbers, but a {family} adapter has {len(sites)} "
                             "layers: give one number per layer, or name=value entries"),
        unknown=lambda name: (f"custom_layer_weights: {name!r} names no layer of a {family} adapter (layers "
                              f"{sites[0].n}..{sites[-1].n}, blocks like 'input 8', 'output 1', 'middle')"))


def custom_entries(text: str, separators: str = ",\n") -> list[str]:
    """The non-empty entries of a custom_layer_weights text, split at any of ``separators``."""
    for separator in separators[1:]:
        text = text.replace(separator, separators[0])
    return [item.strip() for item in text.split(separators[0]) if item.strip()]


def parse_custom_entries(text: str, order: Sequence, lookup: Callable[[str], list], *, count: Callable[[int], str],
                         unknown: Callable[[str], str], separators: str = ",\n", empty: str | None = None,
                         unnamed: float | None = None, error: type = IPAdapterError) -> dict:
    """The one custom_layer_weights parser (UNet layers and DiT blocks): either one number per entry of ``order``,
    or ``name=value`` entries whose name ``lookup`` turns into entries of ``order``; entries not named get
    ``unnamed`` (left out when None). ``empty``: the message for a text with no entries (None: no entries give
    {}); ``count`` / ``unknown``: the messages for a wrong number of entries and a name ``lookup`` does not know.
    Raises ``error``."""
    items = custom_entries(str(text), separators)
    if not items and empty is not None:
        raise error(empty)
    if items and all("=" not in item for item in items):
        if len(items) != len(order):
            raise error(count(len(items)))
        return {key: _number(item) for key, item in zip(order, items)}
    out = {} if unnamed is None else {key: unnamed for key in order}
    for item in items:
        name, _, value = (part.strip() for part in item.partition("="))
        targets = lookup(name)
        if not targets:
            raise error(unknown(name))
        out.update({key: _number(value) for key in targets})
    return out


def _named_layers(sites, name: str) -> list[int]:
    if name.isdigit():
        return [s.n for s in sites if s.n == int(name)]
    match = re.fullmatch(r"(input|output|middle)\s*(\d*)", name)
    if not match:
        return []
    block, block_id = match.group(1), int(match.group(2) or 0)
    return [s.n for s in sites if s.key[0] == block and s.key[1] == block_id]


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise IPAdapterError(f"custom_layer_weights: {text.strip()!r} is not a number: give numbers like '0.5', "
                             "or entries like 'output 1=1.0'") from None
    if not math.isfinite(value):
        raise IPAdapterError(f"custom_layer_weights: {text.strip()!r} is not a finite number: give finite numbers")
    return value


def check_custom_weights(text: str) -> None:
    """The family-independent part of parse_custom_weights (its form and numbers), for checks before the
    adapter is known."""
    items = custom_entries(text)
    if not items:
        raise IPAdapterError("custom_layer_weights is empty: give one number per layer, or entries like "
                             "'output 1=1.0, input 8=0.5'")
    for item in items:
        _number(item.partition("=")[2] if "=" in item else item)


def curve_values(curve: str, points: int) -> list[float]:
    """The weight multiplier at ``points`` evenly spaced fractions of the [start_at, end_at] range."""
    if curve not in _TIME_CURVES:
        raise IPAdapterError(f"unknown weight curve {curve!r}; choose one of {', '.join(CURVES)}")
    return [_TIME_CURVES[curve](i / (points - 1)) for i in range(points)]
