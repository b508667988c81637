"""Tiny FaceID adapters (official key layout; the 512-d face embedding at its real width, everything else tiny)
and face prompts, for host-level tests."""
import torch

from tiny_adapters import CTX, HIDDEN, PATCHES, _rand, tiny_adapter

LORA_RANK = 4


def _mlp(tokens, g):
    return {"proj.0.weight": _rand((1024, 512), g, 0.05), "proj.0.bias": _rand((1024,), g),
            "proj.2.weight": _rand((tokens * CTX, 1024), g, 0.05), "proj.2.bias": _rand((tokens * CTX,), g),
            "norm.weight": 1 + _rand((CTX,), g), "norm.bias": _rand((CTX,), g)}


def _face_resampler(g):
    """perceiver_resampler.*: dim = CTX, one head of 64 (diffusers fixes the head width at 64), 4 layers."""
    sd = {"proj_in.weight": _rand((CTX, HIDDEN), g), "proj_in.bias": _rand((CTX,), g),
          "proj_out.weight": _rand((CTX, CTX), g), "proj_out.bias": _rand((CTX,), g),
          "norm_out.weight": 1 + _rand((CTX,), g), "norm_out.bias": _rand((CTX,), g)}
    for i in range(4):
        p = f"layers.{i}."
        for n in ("0.norm1", "0.norm2", "1.0"):
            sd[f"{p}{n}.weight"] = 1 + _rand((CTX,), g)
            sd[f"{p}{n}.bias"] = _rand((CTX,), g)
        sd.update({p + "0.to_q.weight": _rand((64, CTX), g), p + "0.to_kv.weight": _rand((128, CTX), g),
                   p + "0.to_out.weight": _rand((CTX, 64), g), p + "1.1.weight": _rand((4 * CTX, CTX), g),
                   p + "1.3.weight": _rand((CTX, 4 * CTX), g)})
    return {f"perceiver_resampler.{k}": v for k, v in sd.items()}


def _lora(widths, g):
    out = {}
    for i, width in enumerate(widths):
        for n in (2 * i, 2 * i + 1):
            kv_in = CTX if n % 2 else width
            for name, in_dim in (("q", width), ("k", kv_in), ("v", kv_in), ("out", width)):
                out[f"{n}.to_{name}_lora.down.weight"] = _rand((LORA_RANK, in_dim), g, 0.3)
                out[f"{n}.to_{name}_lora.up.weight"] = _rand((width, LORA_RANK), g, 0.3)
    return out


def tiny_faceid(kind, widths, seed):
    """kind: "faceid" (4 tokens + LoRA), "plus" (+ face resampler, LoRA), "portrait" (16 tokens, no LoRA) or
    "portrait_unnorm" (a Perceiver resampler over the face embedding, no LoRA)."""
    g = torch.Generator().manual_seed(seed)
    layers = tiny_adapter("base", widths, seed + 1)["ip_adapter"]
    if kind == "portrait_unnorm":
        proj = tiny_adapter("plus", widths, seed + 2)["image_proj"]
        proj["proj_in.weight"] = _rand((64, 512), g, 0.05)
        return {"image_proj": proj, "ip_adapter": layers}
    proj = _mlp(16 if kind == "portrait" else 4, g)
    if kind == "plus":
        proj.update(_face_resampler(g))
    if kind in ("faceid", "plus"):
        layers.update(_lora(widths, g))
    return {"image_proj": proj, "ip_adapter": layers}


def face_prompt(ext, faces, seed, crops=False):
    """A FacePrompt of ``faces`` random faces (raw embeddings of norm ~20, as ArcFace gives); with ``crops`` the
    tiny encoder's hidden states of the crops and of the mean-grey image."""
    core = ext.ipadapter_core
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(faces, 512, generator=g)
    hidden = uncond = None
    if crops:
        hidden = torch.randn(faces, PATCHES, HIDDEN, generator=g)
        uncond = torch.randn(1, PATCHES, HIDDEN, generator=g).expand(faces, -1, -1)
    from ipadapter_suite.ipadapter_core.face_prompt import normalised
    return core.FacePrompt(normalised(raw), raw, hidden, uncond, tuple(range(faces)))
