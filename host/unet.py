"""The host UNet as the adapter sees it: cross-attention layers by patch key, the family, fit checks."""
import torch
from safetensors import safe_open

from comfy.ldm.modules.attention import BasicTransformerBlock, SpatialTransformer, optimized_attention

from ..ipadapter_core import FAMILY_NAMES, LAYOUTS, ModelMismatchError
from ..ipadapter_core.layers import FAMILY_CONTEXT_DIM

ATTENTION = optimized_attention  # the host's attention kernel, injected into the core's patch


def cross_attention_layers(model) -> dict[tuple[str, int, int], torch.nn.Module]:
    """The attn2 modules of a ModelPatcher's UNet by patch key (block_name, block_id, transformer_index)."""
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


def attention_weights_in_file(path: str, model) -> dict | None:
    """Every cross-attention layer's (to_k, to_v) weights as the checkpoint file stores them (its own precision),
    by patch key, read without loading the rest; None when the file is not safetensors or names them otherwise."""
    if not str(path).endswith(".safetensors"):
        return None
    unet = model.get_model_object("diffusion_model")
    path_of = {id(module): name for name, module in unet.named_modules()}
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        prefix = next((p for p in ("model.diffusion_model.", "") if any(k.startswith(p + "input_blocks.")
                                                                       for k in keys)), None)
        if prefix is None:
            return None
        found = {}
        for key, attn in cross_attention_layers(model).items():
            names = [f"{prefix}{path_of[id(attn)]}.to_{kv}.weight" for kv in "kv"]
            if not all(name in keys for name in names):
                return None
            found[key] = tuple(f.get_tensor(name) for name in names)
    return found


def unet_family(model) -> str:
    """'sd15' or 'sdxl' from the UNet's cross-attention sites (the layer table is the only truth)."""
    layers = cross_attention_layers(model)
    for family, sites in LAYOUTS.items():
        if {site.key for site in sites} == set(layers):
            return family
    raise ModelMismatchError(f"the UNet has {len(layers)} cross-attention layers, neither the SD1.5 nor the SDXL "
                             "layout: load an SD1.5 or SDXL checkpoint")


def transformer_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """Every SpatialTransformer of a UNet (where the activations are: the gradient-checkpointing unit)."""
    return [module for module in unet.modules() if isinstance(module, SpatialTransformer)]


def _family_of_width(context_dim: int) -> str:
    names = {dim: FAMILY_NAMES[family] for family, dim in FAMILY_CONTEXT_DIM.items()}
    return names.get(context_dim, f"a model with cross-attention width {context_dim}")


def check_model_fits(model, adapter) -> None:
    """Every layer the adapter has exists in the model with the adapter's widths, or a message naming both."""
    spec = adapter.spec
    layers = cross_attention_layers(model)
    inner = dict(spec.layers)
    for site in LAYOUTS[spec.family]:
        attn = layers.get(site.key)
        fits = attn is not None and (attn.to_k.in_features, attn.to_k.out_features) == (
            spec.cross_attention_dim, inner[site.n])
        if not fits:
            found = next(iter(layers.values())).to_k.in_features if layers else 0
            raise ModelMismatchError(
                f"'{adapter.name}' is an {spec.describe}, made for {spec.family_name} models "
                f"(cross-attention width {spec.cross_attention_dim}), but this model is {_family_of_width(found)} "
                f"(layer {site.key} {'missing' if attn is None else 'has other widths'}). Use an IP-Adapter for "
                f"this model, or a {spec.family_name} checkpoint.")
