"""Glue between the pure-torch core and the ComfyUI host: model folder, CLIP vision, model patching.

Everything that touches ``comfy`` or ``folder_paths`` lives here; the node files only declare and call.
"""
import logging
import os
import weakref
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.ops
import comfy.utils
import folder_paths
from comfy.ldm.modules.attention import BasicTransformerBlock, optimized_attention

from ..ipadapter_core import (LAYOUTS, FAMILY_NAMES, ImagePrompt, IPAdapterModel, IPAttentionPatch,
                              ModelMismatchError, build_branches, curve_values, layer_weights, load_adapter_file,
                              load_image_prompt, save_image_prompt, square_images, with_default_uncond)
from ..ipadapter_core.layers import FAMILY_CONTEXT_DIM

FOLDER = "ipadapter"
EXTENSIONS = {".safetensors", ".bin", ".pt", ".pth"}
log = logging.getLogger(__name__)


def register_model_folder() -> None:
    """``models/ipadapter``, keeping paths that ``extra_model_paths.yaml`` already added."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    folder_paths.folder_names_and_paths[FOLDER][1].update(EXTENSIONS)


@dataclass(frozen=True)
class LoadedAdapter:
    """The IPADAPTER socket value."""
    name: str
    model: IPAdapterModel

    @property
    def spec(self):
        return self.model.spec


def load_adapter(path: str) -> LoadedAdapter:
    state_dict, spec = load_adapter_file(path)
    model = IPAdapterModel.from_state_dict(state_dict, operations=comfy.ops.manual_cast)
    log.info("IP-Adapter %s: %s", os.path.basename(path), spec.describe)
    return LoadedAdapter(os.path.basename(path), model)


# ---------------------------------------------------------------------------------------------- CLIP vision

_ZERO_IMAGE_HIDDEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def zero_image_hidden(clip_vision) -> torch.Tensor:
    """Penultimate hidden states (1, P, W) of the all-zero *normalised* pixel tensor (the mean-grey image), the
    reference's unconditional input. Computed once per encoder."""
    cached = _ZERO_IMAGE_HIDDEN.get(clip_vision)
    if cached is None:
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        size = clip_vision.image_size
        pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)  # (1, 3, H, W), already normalised
        out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
        cached = out[1].to(comfy.model_management.intermediate_device())
        _ZERO_IMAGE_HIDDEN[clip_vision] = cached
    return cached


def _encode(clip_vision, image: torch.Tensor, progress, fit: str, batch_size: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (n, H, W, 3) -> pooled embeds (n, E), penultimate hidden states (n, P, W), ``batch_size`` images at a
    time so that only one chunk's activations are ever held."""
    image = square_images(image, fit, fill=tuple(clip_vision.image_mean))
    n = image.shape[0]
    embeds = hidden = None
    for i in range(0, n, batch_size):
        out = clip_vision.encode_image(image[i:i + batch_size], crop=fit != "squash")
        chunk_embeds, chunk_hidden = out["image_embeds"], out["penultimate_hidden_states"]
        if hidden is None:  # filled in place: no list of chunks and no concatenated copy of it
            embeds = chunk_embeds.new_empty((n, *chunk_embeds.shape[1:]))  # (n, E)
            hidden = chunk_hidden.new_empty((n, *chunk_hidden.shape[1:]))  # (n, P, W)
        embeds[i:i + batch_size], hidden[i:i + batch_size] = chunk_embeds, chunk_hidden
        progress.update(chunk_hidden.shape[0])
    return embeds, hidden


def encode_image_prompt(clip_vision, image: torch.Tensor, negative_image: torch.Tensor | None = None,
                        fit: str = "center crop", batch_size: int = 8) -> ImagePrompt:
    count = image.shape[0] + (0 if negative_image is None else negative_image.shape[0])
    progress = comfy.utils.ProgressBar(count)
    embeds, hidden = _encode(clip_vision, image, progress, fit, batch_size)
    if negative_image is None:
        return with_default_uncond(embeds, hidden, zero_image_hidden(clip_vision))
    neg_embeds, neg_hidden = _encode(clip_vision, negative_image, progress, fit, batch_size)
    n = embeds.shape[0]
    if neg_embeds.shape[0] not in (1, n):
        raise ValueError(f"negative_image has {neg_embeds.shape[0]} images for {n} reference images: give one "
                         "negative image, or one per reference image")
    return ImagePrompt(embeds, hidden, neg_embeds.expand(n, -1), neg_hidden.expand(n, -1, -1))


# ---------------------------------------------------------------------------------------------- patching

def _cross_attention_layers(model) -> dict[tuple[str, int, int], torch.nn.Module]:
    """The host's attn2 modules by patch key (block_name, block_id, transformer_index)."""
    unet = model.get_model_object("diffusion_model")
    if not hasattr(unet, "input_blocks"):
        raise ModelMismatchError(f"IP-Adapter needs an SD1.5 or SDXL UNet; this model is a "
                                 f"{type(unet).__name__}. Load an SD1.5 or SDXL checkpoint.")
    blocks = [("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)]
    layers = {}
    for name, group in blocks:
        for block_id, block in enumerate(group):
            attn2 = [m.attn2 for m in block.modules() if isinstance(m, BasicTransformerBlock) and m.attn2 is not None]
            layers.update({(name, block_id, index): attn for index, attn in enumerate(attn2)})
    return layers


def _model_family(context_dim: int) -> str:
    names = {dim: FAMILY_NAMES[family] for family, dim in FAMILY_CONTEXT_DIM.items()}
    return names.get(context_dim, f"a model with cross-attention width {context_dim}")


def check_model_fits(model, adapter: LoadedAdapter) -> None:
    spec = adapter.spec
    layers = _cross_attention_layers(model)
    inner = dict(spec.layers)
    for site in LAYOUTS[spec.family]:
        attn = layers.get(site.key)
        fits = attn is not None and (attn.to_k.in_features, attn.to_k.out_features) == (
            spec.cross_attention_dim, inner[site.n])
        if not fits:
            found = next(iter(layers.values())).to_k.in_features if layers else 0
            raise ModelMismatchError(
                f"'{adapter.name}' is an {spec.describe}, made for {spec.family_name} models "
                f"(cross-attention width {spec.cross_attention_dim}), but this model is {_model_family(found)} "
                f"(layer {site.key} {'missing' if attn is None else 'has other widths'}). Use an IP-Adapter for "
                f"this model, or a {spec.family_name} checkpoint.")


def sigma_range(model, start_at: float, end_at: float) -> tuple[float, float] | None:
    """Fractions of the schedule -> (sigma at start, sigma at end); None when the branch is always on."""
    if start_at <= 0.0 and end_at >= 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_at)), float(sampling.percent_to_sigma(end_at))


CURVE_POINTS = 33


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
    attn_mask: torch.Tensor | None = None  # MASK (M, H, W) or (H, W)
    unfold_batch: bool = False


def apply_ip_adapter(model, adapter: LoadedAdapter, prompt: ImagePrompt, weight: float, start_at: float,
                     end_at: float, options: ApplyOptions = ApplyOptions()):
    """A clone of ``model`` with this adapter's branch on its cross-attention layers (stacked on any before)."""
    check_model_fits(model, adapter)
    prompt.check_fits(adapter.spec)
    patched = model.clone()
    weights = layer_weights(adapter.spec.family, options.layer_preset, weight,
                            composition_weight=options.composition_weight, custom=options.custom_layer_weights)
    if not weights or start_at >= end_at:
        return patched
    mask = options.attn_mask
    branches = build_branches(
        adapter.model, prompt, weight, sigma_range(model, start_at, end_at), options.unfold_batch,
        layer_weights=weights, schedule=weight_schedule(model, options.weight_curve, start_at, end_at),
        mask=None if mask is None else mask.reshape(-1, *mask.shape[-2:]))
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for site in LAYOUTS[adapter.spec.family]:
        if site.n not in branches:
            continue
        previous = existing.get(site.key, existing.get(site.key[:2]))
        if isinstance(previous, IPAttentionPatch):
            patch = previous.stacked(branches[site.n])
        else:
            patch = IPAttentionPatch((branches[site.n],), attention=optimized_attention, inner=previous)
        patched.set_model_attn2_replace(patch, *site.key)
    return patched


# ---------------------------------------------------------------------------------------------- saved prompts

PROMPT_SUBFOLDER = "image_prompts"


def saved_image_prompts() -> list[str]:
    """Saved prompts under input/image_prompts and output/image_prompts, as the host's annotated names."""
    found = []
    for kind, root in (("input", folder_paths.get_input_directory()), ("output", folder_paths.get_output_directory())):
        folder = os.path.join(root, PROMPT_SUBFOLDER)
        if not os.path.isdir(folder):
            continue
        names = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        suffix = "" if kind == "input" else " [output]"
        found += [f"{PROMPT_SUBFOLDER}/{name}{suffix}" for name in names]
    return found


def save_prompt(prompt: ImagePrompt, filename_prefix: str) -> str:
    """Write output/image_prompts/<prefix>_00001_.safetensors (numbered like the host's image saves)."""
    prefix = f"{PROMPT_SUBFOLDER}/{filename_prefix}"
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())
    os.makedirs(folder, exist_ok=True)
    file = f"{name}_{counter:05}_.safetensors"
    save_image_prompt(os.path.join(folder, file), prompt)
    return f"{subfolder}/{file} [output]" if subfolder else f"{file} [output]"


def load_prompt(name: str) -> ImagePrompt:
    path = folder_paths.get_annotated_filepath(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved image prompt '{name}': save one with Save Image Prompt, or put the file "
                                f"in input/{PROMPT_SUBFOLDER}/")
    return load_image_prompt(path)
