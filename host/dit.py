"""Apply a DiT IP-Adapter (Flux, SD3.5) through the host's ``patches_replace["dit"]`` block hooks: the model's
forward is never replaced or copied. One host entry per adapter family (``HOST_FAMILIES``, by the core family's
kind) finds the blocks it patches, adds the host pieces its branches need and makes its patch; the rest is shared.
Per block weights, start/end, curves and masks are resolved to plain data here."""
from dataclasses import dataclass
from typing import Callable

import comfy.model_management
import comfy.ops
import comfy.patcher_extension
from comfy.ldm.flux.layers import DoubleStreamBlock
from comfy.ldm.flux.model import Flux
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

from ..ipadapter_core import InputError, ModelMismatchError
from ..ipadapter_core.dit import dit_block_weights, dit_family
from ..ipadapter_core.dit_attention import (LATENT_SHAPE_KEY, TEXT_TOKENS_KEY, DiTBlockPatch, InstantXFluxPatch,
                                            SD35BlockPatch)
from .unet import ATTENTION
from .memory import HeldTensors, hold_branches, register

WRAPPER_KEY = "ipadapter_latent_shape"


def mmdit_blocks(model) -> dict[tuple[str, int], object]:
    """The joint blocks of a ModelPatcher's MMDiT (SD3.5) by ``patches_replace["dit"]`` key, or a message saying
    what the model is."""
    net = model.get_model_object("diffusion_model")
    if not isinstance(net, MMDiT):
        raise ModelMismatchError(f"this IP-Adapter is for SD3.5 Large; this model is a {type(net).__name__}. "
                                 "Load an SD3.5 Large checkpoint, or use an IP-Adapter made for this model.")
    return {("double_block", i): b for i, b in enumerate(net.joint_blocks)}


def dit_blocks(model) -> dict[tuple[str, int], object]:
    """The transformer blocks of a ModelPatcher's Flux model by ``patches_replace["dit"]`` key. Only the host's
    Flux class with its own double blocks (whose modules the image query is computed from) is accepted: models
    built on other blocks (Chroma's, HunyuanVideo's) are refused before sampling."""
    net = model.get_model_object("diffusion_model")
    if not (isinstance(net, Flux) and all(isinstance(b, DoubleStreamBlock) for b in net.double_blocks)):
        raise ModelMismatchError(f"this IP-Adapter is for Flux models; this model is a {type(net).__name__}. "
                                 "Load a Flux checkpoint, or use an IP-Adapter made for this model.")
    return {**{("double_block", i): b for i, b in enumerate(net.double_blocks)},
            **{("single_block", i): b for i, b in enumerate(net.single_blocks)}}


def check_dit_fits(model, adapter) -> None:
    """Every block the adapter acts on exists with the adapter's width, or a message naming both."""
    spec = adapter.spec
    blocks = HOST_FAMILIES[spec.kind].blocks(model)
    for key in spec.block_keys:
        block = blocks.get(key)
        width = _width(block)
        if width != spec.hidden:
            found = _width(next(iter(blocks.values()))) if blocks else 0
            raise ModelMismatchError(
                f"'{adapter.name}' is an {spec.describe} for {spec.family_name} models of width {spec.hidden}, "
                f"but this model has {len(blocks)} blocks of width {found} ({key} "
                f"{'missing' if block is None else 'has another width'}): use a {spec.family_name} checkpoint.")


def _width(block) -> int | None:
    """A Flux double block's or an MMDiT joint block's width (None when there is no block)."""
    if block is None:
        return None
    return block.hidden_size if hasattr(block, "hidden_size") else block.x_block.attn.qkv.in_features


def host_weights(linear, like):
    """A host Linear's weight and bias as its own forward would use them (cast, with any weight patches)."""
    if getattr(linear, "comfy_cast_weights", False) or getattr(linear, "weight_function", None):
        return comfy.ops.cast_bias_weight(linear, like)[:2]
    bias = None if linear.bias is None else linear.bias.to(like)
    return linear.weight.to(like), bias


def record_latent_shape(executor, x, *args, **kwargs):
    """APPLY_MODEL wrapper: the latent's shape and the text context's length (args: t, c_concat, c_crossattn,
    control, transformer_options) in a copy of transformer_options, for masks."""
    args = list(args)
    context = args[2]
    recorded = {LATENT_SHAPE_KEY: tuple(x.shape)}
    if context is not None:
        recorded[TEXT_TOKENS_KEY] = context.shape[1]
    args[4] = {**(args[4] or {}), **recorded}
    return executor(x, *args, **kwargs)


@dataclass(frozen=True)
class HostFamily:
    """The host side of one core adapter family (``ipadapter_core/family.py``). blocks(model): the blocks it
    patches by key, or ModelMismatchError. patch: its patch class (a patch of that class already on a block is
    stacked on). make(net, key, block, branch, previous): a new patch. options(model, net): the host pieces its
    core ``branches`` takes."""
    blocks: Callable
    patch: type
    make: Callable
    options: Callable = lambda model, net: {}


def _xlabs_patch(net, key, block, branch, previous):
    return DiTBlockPatch(block, (branch,), heads=net.num_heads, patch_size=net.patch_size, weights=host_weights,
                         attention=ATTENTION, inner=previous)


def _instantx_flux_patch(net, key, block, branch, previous):
    return InstantXFluxPatch(
        (branch,), double=key[0] == "double_block", heads=net.num_heads,
        # ComfyUI 0.3.64's double blocks may put the image first (flipped_img_txt); 0.33's never do and lack it
        img_first=bool(getattr(block, "flipped_img_txt", False)) and key[0] == "double_block",
        patch_size=net.patch_size, attention=ATTENTION, inner=previous)


def _instantx_flux_options(model, net):
    # K'/V' of 57 blocks (2 x 128 x 4096 x 3072 per block and row) on the compute device
    return {"head_dim": net.hidden_size // net.num_heads, "compute_device": comfy.model_management.get_torch_device()}


def _sd35_patch(net, key, block, branch, previous):
    return SD35BlockPatch(block, (branch,), patch_size=net.patch_size, weights=host_weights, inner=previous)


HOST_FAMILIES = {
    "xlabs_flux": HostFamily(blocks=dit_blocks, patch=DiTBlockPatch, make=_xlabs_patch),
    "instantx_flux": HostFamily(blocks=dit_blocks, patch=InstantXFluxPatch, make=_instantx_flux_patch,
                                options=_instantx_flux_options),
    "instantx_sd35": HostFamily(blocks=mmdit_blocks, patch=SD35BlockPatch, make=_sd35_patch,
                                options=lambda model, net: {"timestep_of": model.get_model_object(
                                    "model_sampling").timestep}),
}


def apply_dit_adapter(model, adapter, prompt, weight: float, sigma_range, options, schedule=None):
    """A clone of ``model`` with the adapter's image branch on its blocks (stacked on any before)."""
    check_dit_fits(model, adapter)
    prompt.check_fits(adapter.spec)
    if options.unfold_batch or options.frame_weights is not None:
        raise InputError("unfold_batch and frame_weights are for SD1.5/SDXL adapters; turn them off for "
                         f"a {adapter.spec.family_name} IP-Adapter")
    patched = model.clone()
    weights = dit_block_weights(adapter.spec, options.layer_preset, weight, options.custom_layer_weights)
    if not weights:
        return patched
    mask = options.attn_mask
    mask = None if mask is None else mask.reshape(-1, *mask.shape[-2:])
    net = model.get_model_object("diffusion_model")
    host = HOST_FAMILIES[adapter.spec.kind]
    blocks = host.blocks(model)
    branches = dit_family(adapter.spec.kind).branches(adapter.model, prompt, weights, sigma_range, schedule=schedule,
                                                      mask=mask, blocks=blocks, **host.options(model, net))
    held = HeldTensors()
    branches = hold_branches(branches, held)
    register(patched, (adapter.model, held))
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for key, branch in branches.items():
        previous = existing.get(key)
        patch = (previous.stacked(branch) if isinstance(previous, host.patch) else
                 host.make(net, key, blocks[key], branch, previous))
        patched.set_model_patch_replace(patch, "dit", *key)
    if mask is not None:
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                                     record_latent_shape)
    return patched
