"""Apply IP-Adapter: policy (presets, start/end, curves, masks) resolved to plain data at apply time, then one
patch object per cross-attention layer on a clone of the model, through the host's public patch API."""
from dataclasses import dataclass, replace

import torch

from ..ipadapter_core import (IPAttentionPatch, LAYOUTS, ImagePrompt, InputError, build_branches, check_mask,
                              choice, curve_values, finite_number, finite_tensors, layer_weights)
from ..ipadapter_core.attention import EMBEDS_SCALINGS
from ..ipadapter_core.presets import COMPOSITION_BLOCKS, swapped_layers
from ..ipadapter_core.checks import FRACTION_RANGE, WEIGHT_RANGE
from ..ipadapter_core.schedules import FrameWeights, check_frame_weights
from ..ipadapter_core.dit import DiTAdapterSpec
from . import dit
from .faceid_lora import add_faceid_lora
from .memory import HeldTensors, hold_branches, register
from .unet import ATTENTION, check_model_fits

CURVE_POINTS = 33


def sigma_range(model, start_at: float, end_at: float) -> tuple[float, float] | None:
    """Fractions of the schedule -> (sigma at start, sigma at end); None when the branch is always on."""
    if start_at <= 0.0 and end_at >= 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_at)), float(sampling.percent_to_sigma(end_at))


def weight_schedule(model, curve: str, start_at: float, end_at: float):
    """A weight curve over [start_at, end_at] as (sigmas (K,) descending, multipliers (K,)); None if constant."""
    if curve == "constant":
        return None
    sampling = model.get_model_object("model_sampling")
    fractions = [start_at + (end_at - start_at) * i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS)]
    # percent_to_sigma(0) is a sentinel (a huge sigma); the first real sigma stands for the start.
    sigmas = [float(sampling.percent_to_sigma(max(f, 1e-4))) for f in fractions]
    return torch.tensor(sigmas), torch.tensor(curve_values(curve, CURVE_POINTS))


@dataclass(frozen=True)
class ApplyOptions:
    """What the advanced node adds to weight/start/end, resolved to plain data at apply time."""
    layer_preset: str = "linear"
    composition_weight: float = 1.0
    custom_layer_weights: str = ""
    weight_curve: str = "constant"
    attn_mask: torch.Tensor | None = None  # MASK (M, H, W) or (H, W): one per frame, or one for all
    unfold_batch: bool = False
    frame_weights: FrameWeights | None = None  # a multiplier of the weight per frame
    lora_strength: float = 1.0  # FaceID: the file's embedded LoRA (ignored for files without one)
    shortcut_weight: float = 1.0  # FaceID Plus v2: the shortcut's weight (the reference's s_scale)
    embeds_scaling: str = "V only"  # where the weight acts (docs/inference.md#embeds-scaling)


def check_inputs(prompt: ImagePrompt, weight: float, start_at: float, end_at: float, options: ApplyOptions,
                 name: str = "image_prompt"):
    """Everything a script or an API graph could send that would poison sampling, refused before it starts."""
    finite_number("weight", weight, *WEIGHT_RANGE)
    finite_number("start_at", start_at, *FRACTION_RANGE)
    finite_number("end_at", end_at, *FRACTION_RANGE)
    finite_number("composition_weight", options.composition_weight, *WEIGHT_RANGE)
    finite_number("lora_strength", options.lora_strength, *WEIGHT_RANGE)
    finite_number("shortcut_weight", options.shortcut_weight, *WEIGHT_RANGE)
    if start_at > end_at:
        raise InputError(f"start_at {start_at} is after end_at {end_at}: swap them (weight 0 turns the adapter off)")
    if options.attn_mask is not None:
        check_mask("attn_mask", options.attn_mask)
    if options.frame_weights is not None:
        check_frame_weights("frame_weights", options.frame_weights)
    choice("embeds_scaling", options.embeds_scaling, EMBEDS_SCALINGS)
    finite_tensors(name, prompt.named_tensors(), fix="encode the images again (or re-save the prompt)",
                   error=InputError)


def apply_ip_adapter(model, adapter, prompt: ImagePrompt, weight: float, start_at: float, end_at: float,
                     options: ApplyOptions = ApplyOptions()):
    """A clone of ``model`` with this adapter's branch on its cross-attention layers (stacked on any before), and
    a FaceID file's embedded LoRA on its weights."""
    check_inputs(prompt, weight, start_at, end_at, options)
    if isinstance(adapter.spec, DiTAdapterSpec):  # Flux: the host's transformer-block hooks (host/dit.py)
        return _apply_dit(model, adapter, prompt, weight, start_at, end_at, options)
    check_model_fits(model, adapter)
    prompt.check_fits(adapter.spec)
    patched = model.clone()
    add_faceid_lora(patched, adapter, options.lora_strength)
    weights = layer_weights(adapter.spec.family, options.layer_preset, weight,
                            composition_weight=options.composition_weight, custom=options.custom_layer_weights)
    if not weights or start_at >= end_at:
        return patched
    swapped = swapped_layers(adapter.spec.family, options.layer_preset)
    _patch_prompt(patched, model, adapter, prompt, weight, (start_at, end_at), options, weights, swapped)
    return patched


def _patch_prompt(patched, model, adapter, prompt: ImagePrompt, weight, span, options: ApplyOptions, weights,
                  swapped=frozenset()) -> None:
    """The prompt's branches on ``patched``; a prompt with regions (tiles) gets one branch per image, masked by
    its region times ``attn_mask`` (docs/inference.md#tiled-encoding)."""
    if prompt.regions is None:
        _patch(patched, adapter, _branches(model, adapter, prompt, weight, *span, options, weights, swapped))
        return
    if options.unfold_batch:
        raise InputError("image_prompt holds tiles, one region each, which cannot be unfolded over frames: turn "
                         "unfold_batch off, or encode the reference with Encode Image Prompt")
    for i in range(prompt.count):
        part = replace(options, attn_mask=region_mask(prompt.regions[i:i + 1], options.attn_mask))
        _patch(patched, adapter, _branches(model, adapter, prompt.image(i), weight, *span, part, weights, swapped))


def region_mask(region: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """A region (1, h, w) times the user's mask (M, H, W) or (H, W), resized (bilinear) to the mask's size."""
    region = region.float()
    if attn_mask is None:
        return region
    mask = attn_mask.reshape(-1, *attn_mask.shape[-2:]).float()  # (M, H, W)
    if region.shape[-2:] != mask.shape[-2:]:
        region = torch.nn.functional.interpolate(region[:, None], size=mask.shape[-2:], mode="bilinear")[:, 0]
    return mask * region


def _branches(model, adapter, prompt, weight, start_at, end_at, options: ApplyOptions, weights, swapped=frozenset()):
    mask, frame_weights = options.attn_mask, options.frame_weights
    frame_weights = None if frame_weights is None else check_frame_weights("frame_weights", frame_weights).values
    return build_branches(
        adapter.model, prompt, weight, sigma_range(model, start_at, end_at), options.unfold_batch,
        layer_weights=weights, schedule=weight_schedule(model, options.weight_curve, start_at, end_at),
        mask=None if mask is None else mask.reshape(-1, *mask.shape[-2:]),
        frame_weights=frame_weights, swapped=swapped, scaling=options.embeds_scaling,
        shortcut_weight=options.shortcut_weight)



def _patch(patched, adapter, branches) -> None:
    """One patch per layer with a branch, stacked on an IP-Adapter patch already there (or wrapping another's); the
adapter's module and the tensors the branches hold registered with the host's model management (host/memory.py)."""
    held = HeldTensors()
    branches = hold_branches(branches, held)
    register(patched, (adapter.model, held))
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for site in LAYOUTS[adapter.spec.family]:
        if site.n not in branches:
            continue
        previous = existing.get(site.key, existing.get(site.key[:2]))
        if isinstance(previous, IPAttentionPatch):
            patch = previous.stacked(branches[site.n])
        else:
            patch = IPAttentionPatch((branches[site.n],), attention=ATTENTION, inner=previous)
        patched.set_model_attn2_replace(patch, *site.key)


def apply_style_composition(model, adapter, style: ImagePrompt, composition: ImagePrompt, weight_style: float,
                            weight_composition: float, expand_style: bool, start_at: float, end_at: float,
                            options: ApplyOptions = ApplyOptions()):
    """Two references in one patch: ``style``'s tokens on the style layers (every layer but the composition
    blocks with ``expand_style``), ``composition``'s on the composition blocks
    (docs/layers.md#style-and-composition-from-two-images)."""
    finite_number("weight_style", weight_style, *WEIGHT_RANGE)
    finite_number("weight_composition", weight_composition, *WEIGHT_RANGE)
    for name, prompt in (("image_prompt_style", style), ("image_prompt_composition", composition)):
        check_inputs(prompt, weight_style, start_at, end_at, options, name)
    check_model_fits(model, adapter)
    style.check_fits(adapter.spec)
    composition.check_fits(adapter.spec)
    patched = model.clone()
    family = adapter.spec.family
    preset = "strong style and composition" if expand_style else "style and composition"
    weights = layer_weights(family, preset, weight_style, composition_weight=weight_composition)
    blocks = COMPOSITION_BLOCKS[family]
    in_composition = {s.n for s in LAYOUTS[family] if s.key[:2] in blocks}
    parts = [(style, {n: w for n, w in weights.items() if n not in in_composition}),
             (composition, {n: w for n, w in weights.items() if n in in_composition})]
    if start_at >= end_at:
        return patched
    for prompt, part in parts:
        if part:
            _patch_prompt(patched, model, adapter, prompt, weight_style, (start_at, end_at), options, part)
    return patched


def _apply_dit(model, adapter, prompt: ImagePrompt, weight: float, start_at: float, end_at: float,
               options: ApplyOptions):
    if start_at >= end_at:
        dit.check_dit_fits(model, adapter)
        prompt.check_fits(adapter.spec)
        return model.clone()
    return dit.apply_dit_adapter(model, adapter, prompt, weight, sigma_range(model, start_at, end_at), options,
                                 weight_schedule(model, options.weight_curve, start_at, end_at))
