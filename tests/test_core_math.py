"""Core math on tiny shapes, each checked against an independent computation written out here."""
import copy
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ipadapter_suite.ipadapter_core import (Branch, ImagePrompt, IPAdapterModel, IPAttentionPatch, build_branches,
                            with_default_uncond)
from official_formats import base_proj, full_face_proj, ip_layers, plus_proj

TINY_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 256, 256, 128, 128, 128, 64, 64, 64, 256]


def reference_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, written out with explicit loops over heads."""
    b, n, inner = q.shape
    d = inner // heads
    outs = []
    for h in range(heads):
        qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
        weights = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(weights @ vh)
    return torch.cat(outs, dim=-1)


def _branch(inner=32, tokens=4, weight=1.0, sigma_range=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(1, tokens, inner, generator=g) for _ in range(4)]
    return Branch(*t, weight=weight, sigma_range=sigma_range)


def test_patch_adds_weighted_image_attention_per_row_kind():
    torch.manual_seed(0)
    heads, inner = 4, 32
    q, k, v = torch.randn(4, 10, inner), torch.randn(4, 7, inner), torch.randn(4, 7, inner)
    branch = _branch(inner, weight=0.7)
    out = IPAttentionPatch((branch,))(q, k, v, {"n_heads": heads, "cond_or_uncond": [0, 1]})
    expected = reference_attention(q, k, v, heads)
    expected[:2] += 0.7 * reference_attention(q[:2], branch.k_cond.expand(2, -1, -1),
                                              branch.v_cond.expand(2, -1, -1), heads)
    expected[2:] += 0.7 * reference_attention(q[2:], branch.k_uncond.expand(2, -1, -1),
                                              branch.v_uncond.expand(2, -1, -1), heads)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_uncond_first_and_cond_only_batches():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    branch = _branch(16)
    patch = IPAttentionPatch((branch,))
    swapped = patch(q, k, v, {"n_heads": 2, "cond_or_uncond": [1, 0]})
    expected_row0 = reference_attention(q[:1], k[:1], v[:1], 2) + reference_attention(
        q[:1], branch.k_uncond, branch.v_uncond, 2)
    torch.testing.assert_close(swapped[:1], expected_row0, rtol=1e-5, atol=1e-5)
    cond_only = patch(q, k, v, {"n_heads": 2, "cond_or_uncond": [0]})
    expected = reference_attention(q, k, v, 2) + reference_attention(
        q, branch.k_cond.expand(2, -1, -1), branch.v_cond.expand(2, -1, -1), 2)
    torch.testing.assert_close(cond_only, expected, rtol=1e-5, atol=1e-5)


def test_sigma_range_gates_without_changing_the_text_branch():
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    patch = IPAttentionPatch((_branch(16, sigma_range=(10.0, 1.0)),))
    plain = IPAttentionPatch(()).__call__(q, k, v, {"n_heads": 2})
    inside = patch(q, k, v, {"n_heads": 2, "cond_or_uncond": [0, 1], "sigmas": torch.tensor([5.0])})
    outside = patch(q, k, v, {"n_heads": 2, "cond_or_uncond": [0, 1], "sigmas": torch.tensor([0.5])})
    assert torch.equal(outside, plain)
    assert not torch.allclose(inside, plain)


def test_clone_shares_patch_and_stacking_makes_a_new_object():
    patch = IPAttentionPatch((_branch(),))
    assert copy.deepcopy({"p": patch})["p"] is patch
    both = patch.stacked(_branch(seed=1))
    assert len(patch.branches) == 1 and len(both.branches) == 2
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 5, 32), torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    extra = {"n_heads": 4}
    torch.testing.assert_close(both(q, k, v, extra) - patch(q, k, v, extra),
                               IPAttentionPatch((_branch(seed=1),))(q, k, v, extra) - reference_attention(q, k, v, 4),
                               rtol=1e-4, atol=1e-5)


def test_to_dtype_places_image_keys_in_that_dtype():
    patch = IPAttentionPatch((_branch(),)).to(torch.device("cpu")).to(torch.float64)
    q, k, v = (torch.randn(1, 5, 32, dtype=torch.float64) for _ in range(3))
    assert patch(q, k, v, {"n_heads": 4}).dtype == torch.float64
    assert patch._placed[0].k_cond.dtype == torch.float64


def test_inner_patch_is_kept_under_the_image_branch():
    calls = []

    def other(q, k, v, extra):
        calls.append(1)
        return torch.zeros_like(q)

    branch = _branch(16)
    q, k, v = torch.randn(1, 5, 16), torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    out = IPAttentionPatch((branch,), inner=other)(q, k, v, {"n_heads": 2})
    assert calls == [1]
    torch.testing.assert_close(out, reference_attention(q, branch.k_cond, branch.v_cond, 2), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ projections

def _random(sd, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in sd.items()}


def _adapter(proj):
    return IPAdapterModel.from_state_dict({"image_proj": _random(proj), "ip_adapter": _random(ip_layers(TINY_WIDTHS, 32), 1)})


def test_base_projection_matches_formula():
    model = _adapter(base_proj(24, 32))
    p = model.nested_state_dict()["image_proj"]
    x = torch.randn(3, 24)
    expected = F.layer_norm((x @ p["proj.weight"].T + p["proj.bias"]).reshape(3, 4, 32), (32,),
                            p["norm.weight"], p["norm.bias"])
    torch.testing.assert_close(model.image_tokens(x), expected)


def test_full_face_projection_matches_formula():
    model = _adapter(full_face_proj(32, hidden=40))
    p = model.nested_state_dict()["image_proj"]
    x = torch.randn(2, 9, 40)
    h = F.gelu(x @ p["proj.0.weight"].T + p["proj.0.bias"]) @ p["proj.2.weight"].T + p["proj.2.bias"]
    torch.testing.assert_close(model.image_tokens(x), F.layer_norm(h, (32,), p["proj.3.weight"], p["proj.3.bias"]))


def reference_resampler(p, x, depth, heads):
    """The Perceiver resampler written out from the published formulas (scale d^-1/4 on q and k)."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], p[name + ".weight"], p[name + ".bias"])
    lat = p["latents"].repeat(x.shape[0], 1, 1)
    x = x @ p["proj_in.weight"].T + p["proj_in.bias"]
    for i in range(depth):
        a = f"layers.{i}.0."
        xn, ln_lat = ln(x, a + "norm1"), ln(lat, a + "norm2")
        q = ln_lat @ p[a + "to_q.weight"].T
        kv = torch.cat([xn, ln_lat], 1) @ p[a + "to_kv.weight"].T
        k, v = kv.chunk(2, -1)
        d = q.shape[-1] // heads
        outs = []
        for h in range(heads):
            qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
            outs.append(torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), -1) @ vh)
        lat = torch.cat(outs, -1) @ p[a + "to_out.weight"].T + lat
        f = f"layers.{i}.1."
        lat = F.gelu(ln(lat, f + "0") @ p[f + "1.weight"].T) @ p[f + "3.weight"].T + lat
    return ln(lat @ p["proj_out.weight"].T + p["proj_out.bias"], "norm_out")


def test_resampler_matches_formula():
    model = _adapter(plus_proj(128, 32, hidden=48, depth=2, tokens=16))
    assert model.spec.resampler_heads == 2 and model.spec.resampler_depth == 2
    x = torch.randn(2, 9, 48)
    expected = reference_resampler(model.nested_state_dict()["image_proj"], x, depth=2, heads=2)
    torch.testing.assert_close(model.image_tokens(x), expected, rtol=1e-4, atol=1e-5)


def test_several_images_concatenate_tokens_and_uncond_uses_zero_embeddings():
    model = _adapter(base_proj(24, 32))
    embeds = torch.randn(2, 24)
    prompt = with_default_uncond(embeds, torch.zeros(2, 5, 8), torch.zeros(1, 5, 8))
    branches = build_branches(model, prompt, weight=1.0)
    assert sorted(branches) == list(range(1, 32, 2))
    w_k = model.ip_adapter["1"].to_k_ip.weight
    tokens = model.image_tokens(embeds).reshape(1, 8, 32)  # image 0's 4 tokens, then image 1's
    torch.testing.assert_close(branches[1].k_cond, tokens @ w_k.T)
    zero_tokens = model.image_tokens(torch.zeros(2, 24)).reshape(1, 8, 32)
    torch.testing.assert_close(branches[1].k_uncond, zero_tokens @ w_k.T)


def test_negative_rows_must_match_images():
    with pytest.raises(ValueError, match="as many uncond rows"):
        ImagePrompt(torch.zeros(2, 4), torch.zeros(2, 3, 5), torch.zeros(1, 4), torch.zeros(1, 3, 5))


BLOCKED = ["comfy", "folder_paths", "nodes", "server", "accelerate", "comfy_extras", "execution"]


def test_core_imports_no_host_module():
    code = f"""
import importlib.abc, sys, pkgutil
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import launch
launch.import_extension()
import ipadapter_suite.ipadapter_core as core
for m in pkgutil.walk_packages(core.__path__, 'ipadapter_suite.ipadapter_core.'):
    importlib.import_module(m.name)
print('clean')
"""
    from conftest import REPO
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
