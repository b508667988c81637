"""State dicts with the exact keys and shapes of the official h94/IP-Adapter files, written out here from the
published format (docs/formats.md#variants), independently of ipadapter_core. Meta tensors by default: no memory,
no values.
"""
import torch

SD15_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280]
SDXL_WIDTHS = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10


def _t(*shape, device="meta"):
    return torch.empty(*shape, device=device) if device == "meta" else torch.randn(*shape, device=device) * 0.02


def ip_layers(widths, cross_dim, device="meta"):
    out = {}
    for i, width in enumerate(widths):
        out[f"{2 * i + 1}.to_k_ip.weight"] = _t(width, cross_dim, device=device)
        out[f"{2 * i + 1}.to_v_ip.weight"] = _t(width, cross_dim, device=device)
    return out


def base_proj(embed, cross_dim, tokens=4, device="meta"):
    return {"proj.weight": _t(tokens * cross_dim, embed, device=device), "proj.bias": _t(tokens * cross_dim, device=device),
            "norm.weight": _t(cross_dim, device=device), "norm.bias": _t(cross_dim, device=device)}


def plus_proj(dim, cross_dim, hidden=1280, depth=4, tokens=16, device="meta"):
    sd = {"latents": _t(1, tokens, dim, device=device),
          "proj_in.weight": _t(dim, hidden, device=device), "proj_in.bias": _t(dim, device=device),
          "proj_out.weight": _t(cross_dim, dim, device=device), "proj_out.bias": _t(cross_dim, device=device),
          "norm_out.weight": _t(cross_dim, device=device), "norm_out.bias": _t(cross_dim, device=device)}
    for i in range(depth):
        p = f"layers.{i}."
        for norm in ("norm1", "norm2"):
            sd[p + f"0.{norm}.weight"] = _t(dim, device=device)
            sd[p + f"0.{norm}.bias"] = _t(dim, device=device)
        sd[p + "0.to_q.weight"] = _t(dim, dim, device=device)  # heads * 64 == dim
        sd[p + "0.to_kv.weight"] = _t(2 * dim, dim, device=device)
        sd[p + "0.to_out.weight"] = _t(dim, dim, device=device)
        sd[p + "1.0.weight"] = _t(dim, device=device)
        sd[p + "1.0.bias"] = _t(dim, device=device)
        sd[p + "1.1.weight"] = _t(4 * dim, dim, device=device)
        sd[p + "1.3.weight"] = _t(dim, 4 * dim, device=device)
    return sd


def full_face_proj(cross_dim, hidden=1280, device="meta"):
    return {"proj.0.weight": _t(hidden, hidden, device=device), "proj.0.bias": _t(hidden, device=device),
            "proj.2.weight": _t(cross_dim, hidden, device=device), "proj.2.bias": _t(cross_dim, device=device),
            "proj.3.weight": _t(cross_dim, device=device), "proj.3.bias": _t(cross_dim, device=device)}


# file stem -> (state dict maker, expected kind, tokens, family, encoder name)
OFFICIAL = {
    "ip-adapter_sd15": (lambda: base_proj(1024, 768), SD15_WIDTHS, 768, "base", 4, "sd15", "ViT-H/14"),
    "ip-adapter_sd15_light": (lambda: base_proj(1024, 768), SD15_WIDTHS, 768, "base", 4, "sd15", "ViT-H/14"),
    "ip-adapter_sd15_vit-G": (lambda: base_proj(1280, 768), SD15_WIDTHS, 768, "base", 4, "sd15", "ViT-bigG/14"),
    "ip-adapter-plus_sd15": (lambda: plus_proj(768, 768), SD15_WIDTHS, 768, "plus", 16, "sd15", "ViT-H/14"),
    "ip-adapter-plus-face_sd15": (lambda: plus_proj(768, 768), SD15_WIDTHS, 768, "plus", 16, "sd15", "ViT-H/14"),
    "ip-adapter-full-face_sd15": (lambda: full_face_proj(768), SD15_WIDTHS, 768, "full_face", None, "sd15",
                                  "ViT-H/14"),
    "ip-adapter_sdxl": (lambda: base_proj(1280, 2048), SDXL_WIDTHS, 2048, "base", 4, "sdxl", "ViT-bigG/14"),
    "ip-adapter_sdxl_vit-h": (lambda: base_proj(1024, 2048), SDXL_WIDTHS, 2048, "base", 4, "sdxl", "ViT-H/14"),
    "ip-adapter-plus_sdxl_vit-h": (lambda: plus_proj(1280, 2048), SDXL_WIDTHS, 2048, "plus", 16, "sdxl",
                                   "ViT-H/14"),
    "ip-adapter-plus-face_sdxl_vit-h": (lambda: plus_proj(1280, 2048), SDXL_WIDTHS, 2048, "plus", 16, "sdxl",
                                        "ViT-H/14"),
}


def official_state_dict(stem):
    make_proj, widths, cross_dim, *_ = OFFICIAL[stem]
    return {"image_proj": make_proj(), "ip_adapter": ip_layers(widths, cross_dim)}


def write_random_adapter(path, stem, seed=0):
    """Write ``stem``'s official layout at real size as a fp16 ``.safetensors`` file with random values (norm
    weights 1), as users' files are laid out."""
    import safetensors.torch
    g = torch.Generator().manual_seed(seed)
    flat = {}
    for part, tensors in official_state_dict(stem).items():
        for key, meta in tensors.items():
            norm = key.endswith("weight") and len(meta.shape) == 1
            value = torch.ones(meta.shape) if norm else torch.randn(meta.shape, generator=g) * 0.02
            flat[f"{part}.{key}"] = value.half()
    safetensors.torch.save_file(flat, str(path))
