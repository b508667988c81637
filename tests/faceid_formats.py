"""State dicts with the exact keys and shapes of the h94/IP-Adapter-FaceID files, written out here from the
published format (docs/faceid.md#formats) and the reference's modules (ip_adapter_faceid.py: MLPProjModel,
ProjPlusModel, FacePerceiverResampler; LoRA processors of rank 128 on every attention processor), independently of
ipadapter_core. Meta tensors by default."""
import torch

from official_formats import SD15_WIDTHS, SDXL_WIDTHS, ip_layers, plus_proj

RANK = 128


def _t(*shape, device="meta"):
    return torch.empty(*shape, device=device)


def mlp_proj(cross_dim, tokens, device="meta"):
    return {"proj.0.weight": _t(1024, 512, device=device), "proj.0.bias": _t(1024, device=device),
            "proj.2.weight": _t(tokens * cross_dim, 1024, device=device),
            "proj.2.bias": _t(tokens * cross_dim, device=device),
            "norm.weight": _t(cross_dim, device=device), "norm.bias": _t(cross_dim, device=device)}


def face_resampler(cross_dim, hidden=1280, depth=4, device="meta"):
    """perceiver_resampler.*: FacePerceiverResampler(dim=C, heads=C/64, embedding_dim=hidden, output_dim=C)."""
    sd = plus_proj(cross_dim, cross_dim, hidden=hidden, depth=depth, device=device)
    del sd["latents"]  # the face tokens are its latents
    return {f"perceiver_resampler.{k}": v for k, v in sd.items()}


def lora(widths, cross_dim, rank=RANK, device="meta"):
    """LoRAAttnProcessor (N even, self-attention) / LoRAIPAttnProcessor (N odd) weights on every processor N."""
    out = {}
    for i, width in enumerate(widths):
        for n in (2 * i, 2 * i + 1):
            kv_in = cross_dim if n % 2 else width
            for name, in_dim in (("q", width), ("k", kv_in), ("v", kv_in), ("out", width)):
                out[f"{n}.to_{name}_lora.down.weight"] = _t(rank, in_dim, device=device)
                out[f"{n}.to_{name}_lora.up.weight"] = _t(width, rank, device=device)
    return out


def _file(proj, widths, cross_dim, with_lora):
    layers = ip_layers(widths, cross_dim)
    if with_lora:
        layers.update(lora(widths, cross_dim))
    return {"image_proj": proj, "ip_adapter": layers}


# file stem -> (state dict maker, faceid_variant given, kind, variant, tokens per face, family, LoRA)
FACEID_FILES = {
    "ip-adapter-faceid_sd15": (lambda: _file(mlp_proj(768, 4), SD15_WIDTHS, 768, True),
                               "auto", "faceid", "faceid", 4, "sd15", True),
    "ip-adapter-faceid-plus_sd15": (lambda: _file({**mlp_proj(768, 4), **face_resampler(768)}, SD15_WIDTHS, 768,
                                                  True), "auto", "faceid_plus", "plus", 4, "sd15", True),
    "ip-adapter-faceid-plusv2_sd15": (lambda: _file({**mlp_proj(768, 4), **face_resampler(768)}, SD15_WIDTHS,
                                                    768, True), "plus v2", "faceid_plus", "plus v2", 4, "sd15",
                                      True),
    "ip-adapter-faceid-portrait_sd15": (lambda: _file(mlp_proj(768, 16), SD15_WIDTHS, 768, False),
                                        "auto", "faceid", "portrait", 16, "sd15", False),
    "ip-adapter-faceid-portrait-v11_sd15": (lambda: _file(mlp_proj(768, 16), SD15_WIDTHS, 768, False),
                                            "portrait", "faceid", "portrait", 16, "sd15", False),
    "ip-adapter-faceid_sdxl": (lambda: _file(mlp_proj(2048, 4), SDXL_WIDTHS, 2048, True),
                               "auto", "faceid", "faceid", 4, "sdxl", True),
    "ip-adapter-faceid-plusv2_sdxl": (lambda: _file({**mlp_proj(2048, 4), **face_resampler(2048)}, SDXL_WIDTHS,
                                                    2048, True), "plus v2", "faceid_plus", "plus v2", 4, "sdxl",
                                      True),
    "ip-adapter-faceid-portrait_sdxl": (lambda: _file(mlp_proj(2048, 16), SDXL_WIDTHS, 2048, False),
                                        "auto", "faceid", "portrait", 16, "sdxl", False),
    # An experimental file: a plain Perceiver resampler (dim 1280, 20 heads, 16 queries) over the raw embedding.
    "ip-adapter-faceid-portrait_sdxl_unnorm": (lambda: _file(plus_proj(1280, 2048, hidden=512), SDXL_WIDTHS, 2048,
                                                             False), "auto", "faceid_resampler", "portrait unnorm",
                                               16, "sdxl", False),
}


def faceid_state_dict(stem):
    return FACEID_FILES[stem][0]()


def write_random_faceid(path, stem, seed=0, lora_scale=0.002):
    """``stem``'s layout at real size as a fp16 ``.safetensors`` file (or, for a ``.bin`` path, the reference's
    ``torch.save`` layout) with random values (norm weights 1, a small LoRA so that the random model stays
    finite)."""
    from pathlib import Path

    import safetensors.torch
    g = torch.Generator().manual_seed(seed)
    flat = {}
    for part, tensors in faceid_state_dict(stem).items():
        for key, meta in tensors.items():
            norm = key.endswith("weight") and len(meta.shape) == 1
            scale = lora_scale if "_lora." in key else 0.02
            value = torch.ones(meta.shape) if norm else torch.randn(meta.shape, generator=g) * scale
            flat[f"{part}.{key}"] = value.half()
    if Path(path).suffix == ".bin":
        nested = {part: {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(part + ".")}
                  for part in ("image_proj", "ip_adapter")}
        torch.save(nested, str(path))
    else:
        safetensors.torch.save_file(flat, str(path))
