"""A FaceID file's embedded LoRA on a model clone, through the host's weight-patch mechanism
(``ModelPatcher.add_patches`` with the host's own LoRA weight adapter): ``W + strength * up @ down`` on the
to_q, to_k, to_v and to_out.0 weights of every attention layer (docs/faceid.md#embedded-lora)."""
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.weight_adapter.lora import LoRAAdapter

from ..ipadapter_core import LAYOUTS, ModelMismatchError
from ..ipadapter_core.adapter import LORA_TARGETS

_WEIGHT = {"q": "to_q.weight", "k": "to_k.weight", "v": "to_v.weight", "out": "to_out.0.weight"}


def attention_paths(model) -> dict[tuple[str, int, int], tuple[str, str]]:
    """{attn2 patch key: (attn1 path, attn2 path)} of every transformer block, as state-dict prefixes of the
    ModelPatcher's model (``diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1``)."""
    from .unet import cross_attention_layers
    unet = model.get_model_object("diffusion_model")
    path_of = {id(module): name for name, module in unet.named_modules()}
    block_of = {id(m.attn2): m for m in unet.modules() if isinstance(m, BasicTransformerBlock) and m.attn2}
    paths = {}
    for key, attn2 in cross_attention_layers(model).items():
        block = path_of[id(block_of[id(attn2)])]
        paths[key] = (f"diffusion_model.{block}.attn1", f"diffusion_model.{block}.attn2")
    return paths


def lora_patches(model, adapter) -> dict[str, LoRAAdapter]:
    """{host weight key: the host's LoRA adapter over this file's (up, down)} for every attention layer N: odd N
    is the cross-attention of the block at that layer's site, N - 1 its self-attention."""
    paths = attention_paths(model)
    layers = adapter.model.ip_adapter
    patches = {}
    for site in LAYOUTS[adapter.spec.family]:
        for n, path in zip((site.n - 1, site.n), paths[site.key]):
            layer = layers[str(n)]
            for name in LORA_TARGETS:
                pair = getattr(layer, f"to_{name}_lora")
                # (up, down, alpha, mid, dora_scale, reshape); alpha None: scale 1, as the reference's layers
                patches[f"{path}.{_WEIGHT[name]}"] = LoRAAdapter(set(), (pair.up.weight, pair.down.weight,
                                                                        None, None, None, None))
    return patches


def add_faceid_lora(patched, adapter, strength: float) -> None:
    """Add the embedded LoRA to ``patched`` (a clone) at ``strength``; nothing when the file has none or the
    strength is 0 (the model's weights stay exactly as they were)."""
    if not adapter.spec.lora_rank or strength == 0.0:
        return
    patches = lora_patches(patched, adapter)
    added = set(patched.add_patches(patches, strength))
    missing = sorted(set(patches) - added)
    if missing:
        raise ModelMismatchError(f"'{adapter.name}': its LoRA has no weight to patch at {missing[0]} (and "
                                 f"{len(missing) - 1} more): the model is not the {adapter.spec.family_name} "
                                 "UNet the file was made for")
