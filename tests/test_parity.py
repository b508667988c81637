"""Parity: the patched host model against diffusers' UNet2DConditionModel with its own IP-Adapter processors
loaded from the same file (tiny widths, the real SD1.5 and SDXL block layouts, fp32)."""
import copy

import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import CTX, SIGMA, random_prompt, rel_err, save_and_load, tiny_adapter, tiny_inputs

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def pair(request, host):
    from parity_models import build_pair
    patcher, unet, info = build_pair(request.param, seed=3, context_dim=CTX)
    return patcher, unet, info


def _diffusers_embeds(kind, prompt):
    """diffusers' image_embeds for one row: [1, K, E] pooled (base) or [1, K, P, W] hidden states."""
    if kind == "base":
        return prompt.embeds[None], prompt.uncond_embeds[None]
    return prompt.hidden[None], prompt.uncond_hidden[None]


@pytest.mark.parametrize("kind,images", [("base", 1), ("plus", 1), ("full_face", 1), ("base", 2), ("plus", 2)])
def test_patched_host_equals_diffusers(ext, pair, tmp_path, kind, images):
    from parity_models import diffusers_eps, diffusers_load_ip_adapter, diffusers_set_scale, host_eps
    patcher, unet, info = pair
    sd = tiny_adapter(kind, [w for _, w in info["cross_attn"]], seed=11)
    adapter = save_and_load(ext, tmp_path, sd, f"{kind}.safetensors")
    prompt = random_prompt(ext, images, seed=5)
    patched = ext.host.patching.apply_ip_adapter(patcher, adapter, prompt, 0.8, 0.0, 1.0)
    x, ctx_cond, ctx_uncond = tiny_inputs(7)
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
    p_plus, p_base = random_prompt(ext, 1, 31), random_prompt(ext, 2, 32)
    model = ext.host.patching.apply_ip_adapter(patcher, save_and_load(ext, tmp_path, sd_plus, "p.safetensors"),
                                            p_plus, 0.6, 0.0, 1.0)
    model = ext.host.patching.apply_ip_adapter(model, save_and_load(ext, tmp_path, sd_base, "b.safetensors"),
                                            p_base, 1.3, 0.0, 1.0)
    x, ctx_cond, ctx_uncond = tiny_inputs(8)
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
    adapter = save_and_load(ext, tmp_path, tiny_adapter("base", [w for _, w in info["cross_attn"]], 4), "a.safetensors")
    prompt = random_prompt(ext, 1, 6)
    x, ctx_cond, ctx_uncond = tiny_inputs(9)
    plain = host_eps(patcher, x, SIGMA, [ctx_cond, ctx_uncond])
    sampling = patcher.get_model_object("model_sampling")
    assert sampling.percent_to_sigma(0.9) < SIGMA < sampling.percent_to_sigma(0.1)
    for weight, start, end in [(0.0, 0.0, 1.0), (1.0, 0.9, 1.0), (1.0, 0.0, 0.1)]:
        patched = ext.host.patching.apply_ip_adapter(patcher, adapter, prompt, weight, start, end)
        out = host_eps(patched, x, SIGMA, [ctx_cond, ctx_uncond])
        assert all(torch.equal(a, b) for a, b in zip(out, plain)), (weight, start, end)
    inside = ext.host.patching.apply_ip_adapter(patcher, adapter, prompt, 1.0, 0.1, 0.9)
    assert not torch.equal(host_eps(inside, x, SIGMA, [ctx_cond, ctx_uncond])[0], plain[0])


def test_patches_every_cross_attention_layer_and_clone_shares_them(ext, pair, tmp_path):
    patcher, _, info = pair
    adapter = save_and_load(ext, tmp_path, tiny_adapter("base", [w for _, w in info["cross_attn"]], 4), "a.safetensors")
    patched = ext.host.patching.apply_ip_adapter(patcher, adapter, random_prompt(ext, 1, 6), 1.0, 0.0, 1.0)
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
    adapter = save_and_load(ext, tmp_path, tiny_adapter("base", [w for _, w in other_info["cross_attn"]], 4),
                             "other.safetensors")
    with pytest.raises(ext.ipadapter_core.ModelMismatchError, match="Use an IP-Adapter for this model"):
        ext.host.patching.apply_ip_adapter(patcher, adapter, random_prompt(ext, 1, 6), 1.0, 0.0, 1.0)
