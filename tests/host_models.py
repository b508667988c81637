"""Random-weight model files in the exact layouts the ComfyUI host loads, for tests (no downloads).

Every key and shape is read off the host's own module classes, built on the ``meta`` device (so nothing is
allocated), and the values are drawn in fp16, one tensor at a time, straight into a ``.safetensors`` file:

* :func:`make_sd15_checkpoint`: a single-file SD1.5 checkpoint (UNet + CLIP-L text encoder + VAE, original
  LDM key names: ``model.diffusion_model.*``, ``cond_stage_model.transformer.text_model.*``, ``first_stage_model.*``).
* :func:`make_clip_vision_vit_h` / :func:`make_clip_vision_vit_bigg`: CLIP vision encoders in the transformers
  layout (``vision_model.*``, ``visual_projection.weight``) that ``comfy.clip_vision.load`` detects as
  OpenCLIP ViT-H/14 and ViT-bigG/14.

Init: Linear/Conv weights ~ U(-a, a) with variance 1/fan_in, embeddings (and other weights of rank < 2) with
std 0.02, norm weights 1, biases 0. That keeps the full-depth networks' activations O(1), so a sampling step, a
VAE decode, a text encode and an image encode give finite numbers.

The caller must have run ``conftest.import_host()`` first (host on ``sys.path``, CPU forced); the host modules
are imported lazily, inside the functions.
"""
import json
import math
import os
import queue
import struct
import threading

import torch

# The UNet config the host's model detection derives from a real SD1.5 checkpoint, plus SD15.unet_extra_config.
SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
    "num_heads": 8, "num_head_channels": -1,
}

# The host's default SD1.x VAE (comfy/sd.py, VAE.__init__), with quant_conv/post_quant_conv (AutoencoderKL).
SD15_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                     "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
SD15_VAE_EMBED_DIM = 4

# The UNet config the host's model detection derives from a real SDXL base checkpoint.
SDXL_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
    "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."
VAE_PREFIX = "first_stage_model."

_EMBED_STD = 0.02
_SQRT3 = math.sqrt(3.0)

# init kinds
_ZEROS, _ONES, _UNIFORM = "zeros", "ones", "uniform"


def _comfy_dir():
    import comfy.clip_vision
    return os.path.dirname(os.path.realpath(comfy.clip_vision.__file__))


def _specs_of(module, prefix="", skip=()):
    """[(key, shape, kind, bound)] for every state-dict entry of a (meta) module, init chosen by owner module."""
    specs = []
    for name, tensor in module.state_dict(keep_vars=True).items():
        if name in skip:
            continue
        if not tensor.dtype.is_floating_point:
            raise ValueError("host_models: unexpected non-float state entry {} ({})".format(name, tensor.dtype))
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        shape = tuple(tensor.shape)
        if isinstance(owner, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            kind, bound = (_ONES if attr == "weight" else _ZEROS), 0.0
        elif attr == "bias":
            kind, bound = _ZEROS, 0.0
        elif isinstance(owner, torch.nn.Embedding) or len(shape) < 2:
            kind, bound = _UNIFORM, _EMBED_STD * _SQRT3
        else:
            fan_in = math.prod(shape[1:])
            kind, bound = _UNIFORM, _SQRT3 / math.sqrt(fan_in)
        specs.append((prefix + name, shape, kind, bound))
    return specs


def _on_meta(build):
    with torch.device("meta"):
        return build()


def sd15_specs():
    """[(key, shape, kind, bound)] of the SD1.5 checkpoint, keys as in a real single-file SD1.5 checkpoint."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.clip_model import CLIPTextModel

    ops = comfy.ops.disable_weight_init
    unet = _on_meta(lambda: UNetModel(**SD15_UNET_CONFIG, dtype=torch.float16, device="meta", operations=ops))
    with open(os.path.join(_comfy_dir(), "sd1_clip_config.json")) as f:
        clip_config = json.load(f)
    clip = _on_meta(lambda: CLIPTextModel(clip_config, torch.float16, "meta", ops))
    vae = _on_meta(lambda: AutoencoderKL(ddconfig=dict(SD15_VAE_DDCONFIG), embed_dim=SD15_VAE_EMBED_DIM))
    # A real SD1.5 checkpoint has no text projection (the host expects it, and logit_scale, to be missing).
    return (_specs_of(unet, UNET_PREFIX)
            + _specs_of(clip, CLIP_PREFIX, skip=("text_projection.weight",))
            + _specs_of(vae, VAE_PREFIX))


CLIP_VISION_CONFIGS = {"h": "clip_vision_config_h.json", "g": "clip_vision_config_g.json",
                       "l": "clip_vision_config_vitl.json"}  # l: OpenAI CLIP ViT-L/14 (Flux IP-Adapters)


def clip_vision_config(variant):
    """The host's own JSON config for a CLIP vision variant: 'h' (ViT-H/14) or 'g' (ViT-bigG/14)."""
    with open(os.path.join(_comfy_dir(), CLIP_VISION_CONFIGS[variant])) as f:
        return json.load(f)


def clip_vision_specs(variant):
    """[(key, shape, kind, bound)] of a CLIP vision file ('h' or 'g'), transformers-style key names."""
    import comfy.ops
    from comfy.clip_model import CLIPVisionModelProjection

    config = clip_vision_config(variant)
    model = _on_meta(lambda: CLIPVisionModelProjection(config, torch.float16, "meta", comfy.ops.disable_weight_init))
    return _specs_of(model)


def shapes(specs):
    """{key: shape} of a spec list."""
    return {key: shape for key, shape, _, _ in specs}


# safetensors dtype name -> torch dtype of the stored values (fp8: how large checkpoints are often shipped)
DTYPES = {"F16": torch.float16, "F8_E4M3": torch.float8_e4m3fn}


def _fill(shape, kind, bound, generator, dtype=torch.float16):
    if kind == _ZEROS:
        return torch.zeros(shape, dtype=dtype)
    if kind == _ONES:
        return torch.ones(shape, dtype=dtype)
    return torch.empty(shape, dtype=torch.float16).uniform_(-bound, bound, generator=generator).to(dtype)


def write_random_safetensors(path, specs, seed=0, metadata=None, dtype="F16"):
    """Stream a ``.safetensors`` file for ``specs`` with values stored as ``dtype`` (a key of :data:`DTYPES`),
    one tensor in memory at a time (deterministic in seed)."""
    specs = sorted(specs, key=lambda s: s[0])
    torch_dtype = DTYPES[dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for key, shape, _, _ in specs:
        nbytes = itemsize * math.prod(shape)
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    generator = torch.Generator().manual_seed(seed)
    tmp = path + ".partial"
    # Drawing the values and writing them overlap: a writer thread takes the tensors from a short queue.
    chunks = queue.Queue(maxsize=8)
    failure = []

    def writer(f):
        while True:
            tensor = chunks.get()
            if tensor is None:
                return
            if not failure:
                try:
                    f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
                except BaseException as e:  # reported by the main thread
                    failure.append(e)

    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            thread = threading.Thread(target=writer, args=(f,), daemon=True)
            thread.start()
            try:
                for key, shape, kind, bound in specs:
                    if failure:
                        break
                    chunks.put(_fill(shape, kind, bound, generator, torch_dtype))
            finally:
                chunks.put(None)
                thread.join()
            if failure:
                raise failure[0]
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def make_sd15_checkpoint(path: str, seed: int = 0) -> None:
    """Write a random-weight, full-size SD1.5 single-file checkpoint (fp16, ~2.1 GB) to ``path``."""
    write_random_safetensors(path, sd15_specs(), seed)


def make_clip_vision_vit_h(path: str, seed: int = 0) -> None:
    """Write a random-weight OpenCLIP ViT-H/14 vision encoder (transformers layout, fp16, ~1.3 GB) to ``path``."""
    write_random_safetensors(path, clip_vision_specs("h"), seed)


def make_clip_vision_vit_bigg(path: str, seed: int = 0) -> None:
    """Write a random-weight OpenCLIP ViT-bigG/14 vision encoder (transformers layout, fp16, ~3.7 GB) to ``path``."""
    write_random_safetensors(path, clip_vision_specs("g"), seed)


# --------------------------------------------------------------------------------------------- SDXL

SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."


def open_clip_text_specs(prefix, width, layers, vocab=49408, context=77):
    """[(key, shape, kind, bound)] of an OpenCLIP text transformer in its own layout (``transformer.resblocks.*``,
    fused ``attn.in_proj_weight``, ``text_projection`` as a bare [width, width] matrix), as the SDXL base
    checkpoint stores its ViT-bigG text encoder. The host converts it (comfy.utils.clip_text_transformers_convert)."""
    lin = lambda fan_in: (_UNIFORM, _SQRT3 / math.sqrt(fan_in))  # noqa: E731
    emb = (_UNIFORM, _EMBED_STD * _SQRT3)
    specs = [("positional_embedding", (context, width), *emb), ("token_embedding.weight", (vocab, width), *emb),
             ("ln_final.weight", (width,), _ONES, 0.0), ("ln_final.bias", (width,), _ZEROS, 0.0),
             ("text_projection", (width, width), *lin(width))]
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        specs += [(p + "ln_1.weight", (width,), _ONES, 0.0), (p + "ln_1.bias", (width,), _ZEROS, 0.0),
                  (p + "ln_2.weight", (width,), _ONES, 0.0), (p + "ln_2.bias", (width,), _ZEROS, 0.0),
                  (p + "attn.in_proj_weight", (3 * width, width), *lin(width)),
                  (p + "attn.in_proj_bias", (3 * width,), _ZEROS, 0.0),
                  (p + "attn.out_proj.weight", (width, width), *lin(width)),
                  (p + "attn.out_proj.bias", (width,), _ZEROS, 0.0),
                  (p + "mlp.c_fc.weight", (4 * width, width), *lin(width)),
                  (p + "mlp.c_fc.bias", (4 * width,), _ZEROS, 0.0),
                  (p + "mlp.c_proj.weight", (width, 4 * width), *lin(4 * width)),
                  (p + "mlp.c_proj.bias", (width,), _ZEROS, 0.0)]
    return [(prefix + key, shape, kind, bound) for key, shape, kind, bound in specs]


def sdxl_specs():
    """[(key, shape, kind, bound)] of the SDXL base checkpoint, keys as in ``sd_xl_base_1.0.safetensors``: UNet,
    CLIP-L (transformers layout), OpenCLIP ViT-bigG text encoder (OpenCLIP layout), VAE."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.clip_model import CLIPTextModel

    ops = comfy.ops.disable_weight_init
    unet = _on_meta(lambda: UNetModel(**SDXL_UNET_CONFIG, dtype=torch.float16, device="meta", operations=ops))
    with open(os.path.join(_comfy_dir(), "sd1_clip_config.json")) as f:
        clip_l_config = json.load(f)
    clip_l = _on_meta(lambda: CLIPTextModel(clip_l_config, torch.float16, "meta", ops))
    with open(os.path.join(_comfy_dir(), "clip_config_bigg.json")) as f:
        clip_g_config = json.load(f)
    vae = _on_meta(lambda: AutoencoderKL(ddconfig=dict(SD15_VAE_DDCONFIG), embed_dim=SD15_VAE_EMBED_DIM))
    return (_specs_of(unet, UNET_PREFIX)
            + _specs_of(clip_l, SDXL_CLIP_L_PREFIX, skip=("text_projection.weight",))
            + open_clip_text_specs(SDXL_CLIP_G_PREFIX, clip_g_config["hidden_size"],
                                   clip_g_config["num_hidden_layers"], clip_g_config["vocab_size"],
                                   clip_g_config["max_position_embeddings"])
            + _specs_of(vae, VAE_PREFIX))


def make_sdxl_checkpoint(path: str, seed: int = 0, dtype: str = "F8_E4M3") -> None:
    """Write a random-weight, full-size SDXL base single-file checkpoint to ``path``; fp8 (e4m3fn) values by
    default (~3.5 GB instead of 6.9 GB in fp16), which the host loads and computes with in its own dtype."""
    write_random_safetensors(path, sdxl_specs(), seed, dtype=dtype)


# --------------------------------------------------------------------------------------------- ControlNet

CONTROLNET_PREFIX = "control_model."


def controlnet_sd15_specs():
    """[(key, shape, kind, bound)] of an SD1.5 ControlNet in the original layout (``control_model.*``, 3-channel
    hint), as ``control_v11p_sd15_canny`` ships; the host's loader detects it from these shapes."""
    import comfy.ops
    from comfy.cldm.cldm import ControlNet

    config = {k: v for k, v in SD15_UNET_CONFIG.items() if k != "out_channels"}
    net = _on_meta(lambda: ControlNet(**config, hint_channels=3, dtype=torch.float16, device="meta",
                                      operations=comfy.ops.disable_weight_init))
    return _specs_of(net, CONTROLNET_PREFIX)


def make_controlnet_sd15(path: str, seed: int = 0) -> None:
    """Write a random-weight, full-size SD1.5 ControlNet (fp16, ~0.7 GB) to ``path``."""
    write_random_safetensors(path, controlnet_sd15_specs(), seed)


TINY_CLIP_VISION = {"hidden_size": 32, "image_size": 28, "intermediate_size": 64, "model_type": "clip_vision_model",
                    "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 3, "patch_size": 14,
                    "projection_dim": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-5}


def tiny_clip_vision(tmp_dir, seed: int = 0, **overrides):
    """A host ``ClipVisionModel`` with a tiny config (28 px, 2x2 patches, width 32) and random fp32 weights."""
    import comfy.clip_vision
    config = {**TINY_CLIP_VISION, **overrides}
    path = os.path.join(str(tmp_dir), f"tiny_clip_vision_{seed}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    model = comfy.clip_vision.ClipVisionModel(path)
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * 0.2 + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
             for k, v in model.get_sd().items()}
    model.load_sd(state)
    model.model.float()
    return model
