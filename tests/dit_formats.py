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
