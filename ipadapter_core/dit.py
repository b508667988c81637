"""The registry of DiT IP-Adapter families (Flux, SD3.5): one module per family (``family.py`` is their protocol),
listed here once; detection, building and per-block weights dispatch through it (docs/formats.md#flux-ip-adapters,
docs/formats.md#instantx-flux-ip-adapter, docs/formats.md#sd35-ip-adapter)."""
from typing import Mapping

import torch
from torch import nn

from . import instantx_flux, instantx_sd35, xlabs_flux
from .dit_spec import DiTAdapterSpec, check_floats, unsupported_dit_layout  # noqa: F401
from .errors import InputError
from .family import DiTFamily
from .instantx_flux import head_rms_norm  # noqa: F401
from .presets import parse_custom_entries

# detection order: a family claims a file before the ones after it (InstantX FLUX.1-dev takes what is left)
DIT_FAMILIES: tuple[DiTFamily, ...] = (xlabs_flux.FAMILY, instantx_sd35.FAMILY, instantx_flux.FAMILY)
DIT_PRESETS = ("linear", "custom")  # the layer_weights presets that apply to DiT blocks


def dit_family(kind: str) -> DiTFamily:
    return next(f for f in DIT_FAMILIES if f.kind == kind)


def is_dit_layout(flat: Mapping) -> bool:
    """A flat file whose keys are one of the DiT IP-Adapter layouts (not the h94 ``image_proj.``/``ip_adapter.``)."""
    return any(family.marks(flat) for family in DIT_FAMILIES)


def detect_dit_spec(flat: Mapping) -> DiTAdapterSpec:
    """The spec of a flat DiT IP-Adapter state dict (tensors or meta tensors), or AdapterFileError with the fix."""
    check_floats(flat)
    return next(f for f in DIT_FAMILIES if f.claims(flat)).spec(flat)


def build_dit_adapter(flat: Mapping, operations=nn) -> nn.Module:
    """Detect the spec, build on the meta device and load strictly (tensors are taken, not copied)."""
    spec = detect_dit_spec(flat)
    with torch.device("meta"):
        model = dit_family(spec.kind).module(spec, operations)
    model.load_state_dict(dict(flat), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def dit_block_weights(spec, preset: str, weight: float, custom: str = "") -> dict[tuple[str, int], float]:
    """{block key: weight}: ``linear`` gives every block ``weight``; ``custom`` one multiplier per block in run
    order (19 numbers for XLabs Flux, 57 for InstantX FLUX.1-dev: double blocks, then single), or ``name=value``
    entries with names like ``double 3``, ``single 12``."""
    keys = spec.block_keys
    if preset == "linear":
        return {key: weight for key in keys if weight != 0.0}
    if preset != "custom":
        raise InputError(f"layer_weights: '{preset}' is a preset of SD1.5/SDXL UNet layers; for a "
                         f"{spec.family_name} IP-Adapter use {' or '.join(DIT_PRESETS)}")
    names = {f"{kind.split('_')[0]} {i}": (kind, i) for kind, i in keys}
    values = parse_custom_entries(
        custom, keys, lambda name: [names[name]] if name in names else [], separators=",;\n", error=InputError,
        count=lambda given: (f"custom_layer_weights: {given} numbers for {len(keys)} blocks: give one per block "
                             f"({len(keys)}), or entries like 'double 0=1.0, double 5=0.5'"),
        unknown=lambda name: (f"custom_layer_weights: '{name}' is not a block of this adapter: name blocks "
                              f"{_block_names(spec)}"))
    return {key: weight * w for key, w in values.items() if weight * w != 0.0}


def _block_names(spec) -> str:
    names = f"'double 0' ... 'double {len(spec.double_blocks) - 1}'"
    return names + (f" and 'single 0' ... 'single {len(spec.single_blocks) - 1}'" if spec.single_blocks else "")
