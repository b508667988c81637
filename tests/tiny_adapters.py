"""Tiny adapters, prompts and inputs for host-level tests (official key layout, sizes diffusers' loader accepts)."""
import safetensors.torch
import torch

CTX = 32  # tiny cross-attention width
EMBED, HIDDEN, PATCHES = 24, 48, 9  # tiny encoder: pooled width, hidden width, tokens
SIGMA = 1.7


def _rand(shape, g, scale=0.2):
    return torch.randn(shape, generator=g) * scale


def tiny_adapter(kind, widths, seed):
    """An adapter state dict in the official key layout, tiny sizes that diffusers' loader accepts."""
    g = torch.Generator().manual_seed(seed)
    if kind == "base":
        proj = {"proj.weight": _rand((4 * CTX, EMBED), g), "proj.bias": _rand((4 * CTX,), g),
                "norm.weight": 1 + _rand((CTX,), g), "norm.bias": _rand((CTX,), g)}
    elif kind == "full_face":
        proj = {"proj.0.weight": _rand((HIDDEN, HIDDEN), g), "proj.0.bias": _rand((HIDDEN,), g),
                "proj.2.weight": _rand((CTX, HIDDEN), g), "proj.2.bias": _rand((CTX,), g),
                "proj.3.weight": 1 + _rand((CTX,), g), "proj.3.bias": _rand((CTX,), g)}
    else:  # plus: diffusers fixes depth 4 and head dim 64; D = 64 -> 1 head
        dim = 64
        proj = {"latents": _rand((1, 16, dim), g), "proj_in.weight": _rand((dim, HIDDEN), g),
                "proj_in.bias": _rand((dim,), g), "proj_out.weight": _rand((CTX, dim), g),
                "proj_out.bias": _rand((CTX,), g), "norm_out.weight": 1 + _rand((CTX,), g),
                "norm_out.bias": _rand((CTX,), g)}
        for i in range(4):
            p = f"layers.{i}."
            for n in ("0.norm1", "0.norm2", "1.0"):
                proj[f"{p}{n}.weight"] = 1 + _rand((dim,), g)
                proj[f"{p}{n}.bias"] = _rand((dim,), g)
            proj.update({p + "0.to_q.weight": _rand((dim, dim), g), p + "0.to_kv.weight": _rand((2 * dim, dim), g),
                         p + "0.to_out.weight": _rand((dim, dim), g), p + "1.1.weight": _rand((4 * dim, dim), g),
                         p + "1.3.weight": _rand((dim, 4 * dim), g)})
    layers = {}
    for i, width in enumerate(widths):
        layers[f"{2 * i + 1}.to_k_ip.weight"] = _rand((width, CTX), g, 0.3)
        layers[f"{2 * i + 1}.to_v_ip.weight"] = _rand((width, CTX), g, 0.3)
    return {"image_proj": proj, "ip_adapter": layers}


def save_and_load(ext, tmp_path, state_dict, name):
    path = tmp_path / name
    safetensors.torch.save_file({f"{p}.{k}": v.contiguous() for p in state_dict for k, v in state_dict[p].items()},
                                str(path))
    return ext.host.files.load_adapter(str(path))


def save_flat_and_load(ext, tmp_path, flat, name):
    """A flat state dict written as ``name`` (.safetensors) and loaded through Load IP-Adapter's loader."""
    path = tmp_path / name
    safetensors.torch.save_file(flat, str(path))
    return ext.host.files.load_adapter(str(path))


def apply_adapter(ext, model, adapter, prompt, weight=1.0, start=0.0, end=1.0, **options):
    """Apply IP-Adapter's call: ``options`` are ApplyOptions fields."""
    patching = ext.host.patching
    return patching.apply_ip_adapter(model, adapter, prompt, weight, start, end, patching.ApplyOptions(**options))


def random_prompt(ext, images, seed):
    g = torch.Generator().manual_seed(seed)
    embeds, hidden = torch.randn(images, EMBED, generator=g), torch.randn(images, PATCHES, HIDDEN, generator=g)
    zero_hidden = torch.randn(1, PATCHES, HIDDEN, generator=g)  # stands for the encoder's mean-grey output
    return ext.ipadapter_core.with_default_uncond(embeds, hidden, zero_hidden)


def tiny_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, CTX, generator=g),
            torch.randn(1, 3, CTX, generator=g))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()
