"""State dicts with the exact keys and shapes of the published DiT IP-Adapter files, written out here from the
published format (docs/formats.md#flux-ip-adapters), independently of ipadapter_core. Meta tensors: no memory."""
import torch

FLUX_HIDDEN, T5_WIDTH, VIT_L_EMBEDS = 3072, 4096, 768


def _t(*shape):
    return torch.empty(*shape, device="meta")


def xlabs_flux(tokens=4, blocks=range(19)):
    """XLabs-AI/flux-ip-adapter (v1: 4 tokens) and flux-ip-adapter-v2 (16 tokens), flat safetensors keys."""
    sd = {"ip_adapter_proj_model.proj.weight": _t(tokens * T5_WIDTH, VIT_L_EMBEDS),
          "ip_adapter_proj_model.proj.bias": _t(tokens * T5_WIDTH),
          "ip_adapter_proj_model.norm.weight": _t(T5_WIDTH), "ip_adapter_proj_model.norm.bias": _t(T5_WIDTH)}
    for i in blocks:
        for kv in "kv":
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj."
            sd[prefix + "weight"] = _t(FLUX_HIDDEN, T5_WIDTH)
            sd[prefix + "bias"] = _t(FLUX_HIDDEN)
    return sd


def instantx_flux():
    """InstantX/FLUX.1-dev-IP-Adapter: MLP projection of SigLIP pooled (1152) to 128 tokens of 4096, K'/V' on all
    57 blocks (N = 0 ... 56); its RMSNorms on K'/V' have no weights."""
    sd = {"image_proj": {"proj.0.weight": _t(2304, 1152), "proj.0.bias": _t(2304),
                         "proj.2.weight": _t(128 * T5_WIDTH, 2304), "proj.2.bias": _t(128 * T5_WIDTH),
                         "norm.weight": _t(T5_WIDTH), "norm.bias": _t(T5_WIDTH)}, "ip_adapter": {}}
    for i in range(57):
        for kv in "kv":
            sd["ip_adapter"][f"{i}.to_{kv}_ip.weight"] = _t(FLUX_HIDDEN, T5_WIDTH)
    return sd


def instantx_sd35(blocks=38, width=2432, hidden=1280, siglip=1152):
    """InstantX/SD3.5-Large-IP-Adapter: a timestep-conditioned resampler (64 queries) on SigLIP hidden states and,
    per joint block, an AdaLN of the tokens (norm_ip), K'/V' and RMSNorms (diffusers' loaders/transformer_sd3.py
    reads these names)."""
    proj = {"latents": _t(1, 64, hidden), "proj_in.weight": _t(hidden, siglip), "proj_in.bias": _t(hidden),
            "proj_out.weight": _t(width, hidden), "proj_out.bias": _t(width), "norm_out.weight": _t(width),
            "norm_out.bias": _t(width), "time_embedding.linear_1.weight": _t(hidden, 320),
            "time_embedding.linear_1.bias": _t(hidden), "time_embedding.linear_2.weight": _t(hidden, hidden),
            "time_embedding.linear_2.bias": _t(hidden)}
    for i in range(4):
        p = f"layers.{i}."
        proj.update({p + "0.norm1.weight": _t(hidden), p + "0.norm1.bias": _t(hidden), p + "0.norm2.weight": _t(hidden),
                     p + "0.norm2.bias": _t(hidden), p + "0.to_q.weight": _t(hidden, hidden),
                     p + "0.to_kv.weight": _t(2 * hidden, hidden), p + "0.to_out.weight": _t(hidden, hidden),
                     p + "1.0.weight": _t(hidden), p + "1.0.bias": _t(hidden), p + "1.1.weight": _t(4 * hidden, hidden),
                     p + "1.3.weight": _t(hidden, 4 * hidden), p + "2.1.weight": _t(4 * hidden, hidden),
                     p + "2.1.bias": _t(4 * hidden)})
    layers = {}
    for i in range(blocks):
        layers.update({f"{i}.norm_ip.linear.weight": _t(2 * width, hidden), f"{i}.norm_ip.linear.bias": _t(2 * width),
                       f"{i}.to_k_ip.weight": _t(width, width), f"{i}.to_v_ip.weight": _t(width, width),
                       f"{i}.norm_q.weight": _t(64), f"{i}.norm_k.weight": _t(64), f"{i}.norm_ip_k.weight": _t(64)})
    return {"image_proj": proj, "ip_adapter": layers}
