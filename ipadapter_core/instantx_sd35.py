"""The InstantX SD3.5-Large IP-Adapter family (docs/formats.md#sd35-ip-adapter): its entry in the registry. Its
layout, modules and image attention are in ``dit_sd3.py``; its branches resample the image tokens at each step and
are added inside the joint attention of every MMDiT block (``dit_attention.SD35BlockPatch``)."""
from typing import Mapping

from .dit_attention import build_sd35_branches, with_norm_ratios
from .dit_sd3 import InstantXSD35Adapter, is_sd35_layout, sd35_sizes
from .dit_spec import INSTANTX_FIRST_KEY, DiTAdapterSpec, file_parts
from .family import DiTFamily


def sd35_spec(flat: Mapping) -> DiTAdapterSpec:
    parts = file_parts(flat, "InstantX SD3.5 IP-Adapter")
    sizes = sd35_sizes(parts["image_proj"], parts["ip_adapter"])
    return DiTAdapterSpec(kind="instantx_sd35", family="sd35", feature="hidden", **sizes)


def _branches(adapter, prompt, block_weights, sigma_range=None, *, schedule=None, mask=None, blocks, timestep_of):
    """The host passes its joint blocks (for the norm ratios) and its model's sigma -> timestep."""
    branches = build_sd35_branches(adapter, prompt, block_weights, timestep_of, sigma_range, schedule=schedule,
                                   mask=mask)
    return with_norm_ratios(branches, blocks)


FAMILY = DiTFamily(kind="instantx_sd35", title="InstantX SD3.5-Large IP-Adapter",
                   marks=lambda flat: INSTANTX_FIRST_KEY in flat, claims=is_sd35_layout, spec=sd35_spec,
                   module=InstantXSD35Adapter, branches=_branches)
