"""Parity: the patched host model against diffusers' UNet2DConditionModel with its own IP-Adapter processors
loaded from the same file (tiny widths, the real SD1.5 and SDXL block layouts, fp32)."""
import copy

import pytest
import safetensors.torch
import torch

from conftest import HOST, NO_HOST_REASON

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)

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


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def pair(request, host):
    from parity_models import build_pair
    patcher, unet, info = build_pair(request.param, seed=3, context_dim=CTX)
    return patcher, unet, info


def _save_and_load(ext, tmp_path, state_dict, name):
    path = tmp_path / name
    safetensors.torch.save_file({f"{p}.{k}": v.contiguous() for p in state_dict for k, v in state_dict[p].items()},
                                str(path))
    return ext.nodes.host.load_adapter(str(path))


def _prompt(ext, images, seed):
    g = torch.Generator().manual_seed(seed)
    embeds, hidden = torch.randn(images, EMBED, generator=g), torch.randn(images, PATCHES, HIDDEN, generator=g)
    zero_hidden = torch.randn(1, PATCHES, HIDDEN, generator=g)  # stands for the encoder's mean-grey output
    return ext.ipadapter_core.with_default_uncond(embeds, hidden, zero_hidden)


def _diffusers_embeds(kind, prompt):
    """diffusers' image_embeds for one row: [1, K, E] pooled (base) or [1, K, P, W] hidden states."""
    if kind == "base":
        return prompt.embeds[None], prompt.uncond_embeds[None]
    return prompt.hidden[None], prompt.uncond_hidden[None]


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, CTX, generator=g),
            torch.randn(1, 3, CTX, generator=g))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("kind,images", [("base", 1), ("plus", 1), ("full_face", 1), ("base", 2), ("plus", 2)])
def test_patched_host_equals_diffusers(ext, pair, tmp_path, kind, images):
    from parity_models import diffusers_eps, diffusers_load_ip_adapter, diffusers_set_scale, host_eps
    patcher, unet, info = pair
    sd = tiny_adapter(kind, [w for _, w in info["cross_attn"]], seed=11)
    adapter = _save_and_load(ext, tmp_path, sd, f"{kind}.safetensors")
    prompt = _prompt(ext, images, seed=5)
    patched = ext.nodes.host.apply_ip_adapter(patcher, adapter, prompt, 0.8, 0.0, 1.0)
    x, ctx_cond, ctx_uncond = _inputs(7)
    eps_cond, eps_uncond = host_eps(patched, x, SIGMA, [ctx_cond, ctx_uncond])

    reference = diffusers_set_scale(diffusers_load_ip_adapter(copy.deepcopy(unet), sd), 0.8)
    emb_cond, emb_uncond = _diffusers_embeds(kind, prompt)
    ref_cond = diffusers_eps(reference, patcher, x, SIGMA, ctx_cond, {"image_embeds": [emb_cond]})
    ref_uncond = diffusers_eps(reference, patcher, x, SIGMA, ctx_uncond, {"image_embeds": [emb_uncond]})
    plain_cond = host_eps(patcher, x, SIGMA, [ctx_cond])[0]
    assert rel_err(eps_cond, ref_cond) <= 1e-4
    assert rel_err(eps_uncond, ref_uncond) <= 1e-4
    assert rel_err(eps_cond, plain_cond) > 1e-3  # the image prompt really acts


def test_two_stacked_adapters_equal_diffusers_multi_adapter(ext, pair, tmp_path):
    from parity_models import diffusers_eps, diffusers_set_scale, host_eps
    patcher, unet, info = pair
    widths = [w for _, w in info["cross_attn"]]
    sd_plus, sd_base = tiny_adapter("plus", widths, 21), tiny_adapter("base", widths, 22)
    p_plus, p_base = _prompt(ext, 1, 31), _prompt(ext, 2, 32)
    model = ext.nodes.host.apply_ip_adapter(patcher, _save_and_load(ext, tmp_path, sd_plus, "p.safetensors"),
                                            p_plus, 0.6, 0.0, 1.0)
    model = ext.nodes.host.apply_ip_adapter(model, _save_and_load(ext, tmp_path, sd_base, "b.safetensors"),
                                            p_base, 1.3, 0.0, 1.0)
    x, ctx_cond, ctx_uncond = _inputs(8)
    eps_cond, eps_uncond = host_eps(model, x, SIGMA, [ctx_cond, ctx_uncond])

    reference = copy.deepcopy(unet)
    reference._load_ip_adapter_weights([sd_plus, sd_base], low_cpu_mem_usage=False)
    diffusers_set_scale(reference.float().eval(), [0.6, 1.3])
    ref_cond = diffusers_eps(reference, patcher, x, SIGMA, ctx_cond,
                             {"image_embeds": [p_plus.hidden[None], p_base.embeds[None]]})
    ref_uncond = diffusers_eps(reference, patcher, x, SIGMA, ctx_uncond,
                               {"image_embeds": [p_plus.uncond_hidden[None], p_base.uncond_embeds[None]]})
    assert rel_err(eps_cond, ref_cond) <= 1e-4
    assert rel_err(eps_uncond, ref_uncond) <= 1e-4


def test_weight_zero_and_steps_outside_the_range_are_bit_identical(ext, pair, tmp_path):
    from parity_models import host_eps
    patcher, _, info = pair
    adapter = _save_and_load(ext, tmp_path, tiny_adapter("base", [w for _, w in info["cross_attn"]], 4), "a.safetensors")
    prompt = _prompt(ext, 1, 6)
    x, ctx_cond, ctx_uncond = _inputs(9)
    plain = host_eps(patcher, x, SIGMA, [ctx_cond, ctx_uncond])
    sampling = patcher.get_model_object("model_sampling")
    assert sampling.percent_to_sigma(0.9) < SIGMA < sampling.percent_to_sigma(0.1)
    for weight, start, end in [(0.0, 0.0, 1.0), (1.0, 0.9, 1.0), (1.0, 0.0, 0.1)]:
        patched = ext.nodes.host.apply_ip_adapter(patcher, adapter, prompt, weight, start, end)
        out = host_eps(patched, x, SIGMA, [ctx_cond, ctx_uncond])
        assert all(torch.equal(a, b) for a, b in zip(out, plain)), (weight, start, end)
    inside = ext.nodes.host.apply_ip_adapter(patcher, adapter, prompt, 1.0, 0.1, 0.9)
    assert not torch.equal(host_eps(inside, x, SIGMA, [ctx_cond, ctx_uncond])[0], plain[0])


def test_patches_every_cross_attention_layer_and_clone_shares_them(ext, pair, tmp_path):
    patcher, _, info = pair
    adapter = _save_and_load(ext, tmp_path, tiny_adapter("base", [w for _, w in info["cross_attn"]], 4), "a.safetensors")
    patched = ext.nodes.host.apply_ip_adapter(patcher, adapter, _prompt(ext, 1, 6), 1.0, 0.0, 1.0)
    attn2 = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(attn2) == {key for key, _ in info["cross_attn"]}
    assert "patches_replace" not in patcher.model_options.get("transformer_options", {})  # input left alone
    clone = patched.clone()
    clone_attn2 = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(clone_attn2[key] is attn2[key] for key in attn2)  # no copy of image keys/values per clone


def test_adapter_for_the_other_family_is_refused(ext, pair, tmp_path):
    from parity_models import build_pair
    patcher, _, info = pair
    other = "sdxl" if info["layout"] == "sd15" else "sd15"
    _, _, other_info = build_pair(other, seed=1, context_dim=CTX)
    adapter = _save_and_load(ext, tmp_path, tiny_adapter("base", [w for _, w in other_info["cross_attn"]], 4),
                             "other.safetensors")
    with pytest.raises(ext.ipadapter_core.ModelMismatchError, match="Use an IP-Adapter for this model"):
        ext.nodes.host.apply_ip_adapter(patcher, adapter, _prompt(ext, 1, 6), 1.0, 0.0, 1.0)
