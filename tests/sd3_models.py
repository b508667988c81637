"""A tiny SD3.5-Large-shaped MMDiT in the host and its diffusers twin, for the InstantX SD3.5 IP-Adapter tests.

``host_sd3`` builds the host's own ``comfy.model_base.SD3`` (``OpenAISignatureMMDITWrapper``, FLOW model sampling)
with the real block structure of SD3.5 Large (38 joint blocks, RMS q/k norms, the last context block pre-only) at
a tiny width (``depth`` 2: width 128, 2 heads of 64); ``diffusers_sd3`` holds the same weights in diffusers'
``SD3Transformer2DModel``, converted with the host's own ``comfy.utils.mmdit_to_diffusers`` map.
"""
import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import comfy.utils

from flux_models import host_velocity, load_converted, randomize  # noqa: F401  (the same sampler path)

DEPTH, BLOCKS, CONTEXT, POOLED, POS = 2, 38, 32, 16, 16
SIGMA = 0.6


def sd3_config(blocks=BLOCKS, depth=DEPTH):
    return dict(in_channels=16, out_channels=16, patch_size=2, depth=depth, num_blocks=blocks, adm_in_channels=POOLED,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": CONTEXT, "out_features": 64 * depth}},
                pos_embed_max_size=POS, num_patches=POS * POS, pos_embed_scaling_factor=None, qk_norm="rms",
                input_size=None)


def host_sd3(seed=0, blocks=BLOCKS, depth=DEPTH):
    """The host's ModelPatcher of a tiny SD3.5-Large-shaped MMDiT (width 64 * depth, fp32, CPU)."""
    model_config = comfy.supported_models.SD3(sd3_config(blocks, depth))
    model_config.set_inference_dtype(torch.float32, None)
    offload = comfy.model_management.unet_offload_device()
    model = comfy.model_base.SD3(model_config, device=offload)
    randomize(model.diffusion_model, seed)
    with torch.no_grad():  # a buffer the host leaves uninitialised (torch.empty) until a checkpoint fills it
        g = torch.Generator().manual_seed(seed + 1)
        pos = model.diffusion_model.pos_embed
        pos.copy_(0.1 * torch.randn(pos.shape, generator=g))
    model.diffusion_model.float().eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload)


def diffusers_sd3(patcher):
    import diffusers
    net = patcher.model.diffusion_model
    blocks = len(net.joint_blocks)
    twin = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=blocks, attention_head_dim=64,
        num_attention_heads=DEPTH, joint_attention_dim=CONTEXT, caption_projection_dim=64 * DEPTH,
        pooled_projection_dim=POOLED, out_channels=16, pos_embed_max_size=POS, qk_norm="rms_norm")
    key_map = comfy.utils.mmdit_to_diffusers({"depth": DEPTH, "num_blocks": blocks})
    # The map swaps scale and shift of the pre-only context block at index depth - 1, which is the last block only
    # when num_blocks == depth (as in the released models): put the swap on the last block here.
    for end in ("weight", "bias"):
        for index, swapped in ((DEPTH - 1, False), (blocks - 1, True)):
            host_key = f"joint_blocks.{index}.context_block.adaLN_modulation.1.{end}"
            key_map[f"transformer_blocks.{index}.norm1_context.linear.{end}"] = (
                (host_key, None, comfy.utils.swap_scale_shift) if swapped else host_key)
    return load_converted(twin, net.state_dict(), key_map)


def inputs(seed, size=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, size, size, generator=g), torch.randn(1, 5, CONTEXT, generator=g),
            torch.randn(1, 5, CONTEXT, generator=g), torch.randn(1, POOLED, generator=g),
            torch.randn(1, POOLED, generator=g))


def diffusers_velocity(twin, x, sigma, context, pooled, joint_attention_kwargs=None):
    with torch.no_grad():
        return twin(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                    timestep=torch.full((x.shape[0],), float(sigma) * 1000.0),
                    joint_attention_kwargs=joint_attention_kwargs).sample


def instantx_adapter(seed, blocks=BLOCKS, width=64 * DEPTH, dim=64, time_dim=32, tokens=8, embed=48):
    """An InstantX SD3.5 IP-Adapter state dict (the file's two parts) at tiny sizes diffusers' loader accepts:
    resampler depth 4 and head width 64 (its fixed values), token width = the model width."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, one=False):
        return (1.0 if one else 0.0) + torch.randn(shape, generator=g) * scale

    proj = {"latents": rand(1, tokens, dim), "proj_in.weight": rand(dim, embed), "proj_in.bias": rand(dim),
            "proj_out.weight": rand(width, dim), "proj_out.bias": rand(width), "norm_out.weight": rand(width, one=True),
            "norm_out.bias": rand(width), "time_embedding.linear_1.weight": rand(dim, time_dim),
            "time_embedding.linear_1.bias": rand(dim), "time_embedding.linear_2.weight": rand(dim, dim),
            "time_embedding.linear_2.bias": rand(dim)}
    for i in range(4):
        p = f"layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            proj[p + norm + ".weight"], proj[p + norm + ".bias"] = rand(dim, one=True), rand(dim)
        proj.update({p + "0.to_q.weight": rand(dim, dim), p + "0.to_kv.weight": rand(2 * dim, dim),
                     p + "0.to_out.weight": rand(dim, dim), p + "1.1.weight": rand(4 * dim, dim),
                     p + "1.3.weight": rand(dim, 4 * dim), p + "2.1.weight": rand(4 * dim, dim),
                     p + "2.1.bias": rand(4 * dim)})
    layers = {}
    for i in range(blocks):
        layers.update({f"{i}.norm_ip.linear.weight": rand(2 * width, dim), f"{i}.norm_ip.linear.bias": rand(2 * width),
                       f"{i}.to_k_ip.weight": rand(width, width, scale=0.3),
                       f"{i}.to_v_ip.weight": rand(width, width, scale=0.3),
                       f"{i}.norm_q.weight": rand(64, one=True), f"{i}.norm_k.weight": rand(64, one=True),
                       f"{i}.norm_ip_k.weight": rand(64, one=True)})
    return {"image_proj": proj, "ip_adapter": layers}


def diffusers_load_instantx(twin, state_dict, scale):
    twin._load_ip_adapter_weights(state_dict, low_cpu_mem_usage=False)
    for proc in twin.attn_processors.values():
        proc.scale = scale
    return twin.float().eval()
