"""IP-Adapter Regional Prompt: per region an image prompt under its mask (the Apply patch) and a text conditioning
masked to the same region (the host's conditioning mask), resolved before sampling
(docs/inference.md#regional-prompts)."""
from dataclasses import dataclass

import torch

import node_helpers

from ..ipadapter_core import ImagePrompt, InputError, check_mask, finite_number
from .patching import ApplyOptions, apply_ip_adapter

PROMPT_WEIGHT_RANGE = (0.0, 10.0)  # the host's own mask strengths go to 10


@dataclass(frozen=True)
class Region:
    index: int  # 1-based, as the node's inputs are numbered
    mask: torch.Tensor | None
    image_prompt: ImagePrompt | None = None
    text: list | None = None  # CONDITIONING


def masked_text(conditioning, mask: torch.Tensor, strength: float):
    """The host's conditioning with ``mask`` (1, H, W) at ``strength``, as its Conditioning (Set Mask) does."""
    mask = mask.reshape(-1, *mask.shape[-2:])[:1]  # (1, H, W)
    return node_helpers.conditioning_set_values(conditioning, {"mask": mask, "set_area_to_bounds": False,
                                                               "mask_strength": strength})


def check_regions(regions) -> list[Region]:
    """The regions in use; each needs a mask once it has an image prompt or a text."""
    used = [r for r in regions if r.image_prompt is not None or r.text is not None]
    if not used:
        raise InputError("no region: connect image_prompt_1 and mask_1 (and text_1 for its text)")
    for r in used:
        if r.mask is None:
            raise InputError(f"region {r.index} has an image prompt or text but no mask: connect mask_{r.index}")
        check_mask(f"mask_{r.index}", r.mask)
    return used


def regional_prompt(model, adapter, positive, negative, regions, weight: float, prompt_weight: float,
                    start_at: float, end_at: float, embeds_scaling: str = "V only"):
    """(MODEL with each region's image prompt under its mask, positive + each region's masked text, negative)."""
    finite_number("prompt_weight", prompt_weight, *PROMPT_WEIGHT_RANGE)
    patched = model
    out_positive = list(positive)
    for r in check_regions(regions):
        if r.image_prompt is not None:
            options = ApplyOptions(attn_mask=r.mask, embeds_scaling=embeds_scaling)
            patched = apply_ip_adapter(patched, adapter, r.image_prompt, weight, start_at, end_at, options)
        if r.text is not None:
            out_positive += masked_text(r.text, r.mask, prompt_weight)
    return (patched if patched is not model else model.clone()), out_positive, negative
