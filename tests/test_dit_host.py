"""Flux IP-Adapter (XLabs) in the real host: the patched host Flux against diffusers' FluxIPAdapterAttnProcessor with
the same weights (tiny widths, the real 19 + 38 block structure, fp32), and what the controls do."""
import copy

import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import apply_adapter, random_prompt, rel_err, save_flat_and_load

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


@pytest.fixture(scope="module")
def flux(host):
    import flux_models
    patcher = flux_models.host_flux(seed=1)
    return patcher, flux_models.diffusers_flux(patcher)


_load, _apply = save_flat_and_load, apply_adapter


def _run(patcher, seed=3):
    import flux_models as fm
    return fm.velocity_pair(patcher, seed)


@pytest.mark.parametrize("tokens,images", [(4, 1), (16, 1), (4, 2)])
def test_patched_host_flux_equals_diffusers(ext, flux, tmp_path, tokens, images):
    import flux_models as fm
    patcher, twin = flux
    sd = fm.xlabs_adapter(5, tokens=tokens)
    prompt = random_prompt(ext, images, seed=7)
    patched = _apply(ext, patcher, _load(ext, tmp_path, sd, "x.safetensors"), prompt, 0.8)
    cond, uncond = _run(patched)

    reference = fm.diffusers_load_xlabs(copy.deepcopy(twin), [sd], [0.8])
    x, ctx_c, ctx_u, y_c, y_u = fm.inputs(3)
    tok_c = fm.diffusers_tokens(sd, prompt.embeds, tokens).reshape(1, -1, fm.TOKEN_WIDTH)  # images side by side
    tok_u = fm.diffusers_tokens(sd, prompt.uncond_embeds, tokens).reshape(1, -1, fm.TOKEN_WIDTH)
    assert rel_err(cond, fm.diffusers_velocity(reference, x, fm.SIGMA, ctx_c, y_c, [tok_c])) <= 1e-4
    assert rel_err(uncond, fm.diffusers_velocity(reference, x, fm.SIGMA, ctx_u, y_u, [tok_u])) <= 1e-4
    assert rel_err(cond, _run(patcher)[0]) > 1e-3  # the image prompt really acts


def test_two_stacked_adapters_equal_diffusers_multi_adapter(ext, flux, tmp_path):
    import flux_models as fm
    patcher, twin = flux
    sd_a, sd_b = fm.xlabs_adapter(11, tokens=4), fm.xlabs_adapter(12, tokens=16)
    p_a, p_b = random_prompt(ext, 1, 21), random_prompt(ext, 1, 22)
    model = _apply(ext, patcher, _load(ext, tmp_path, sd_a, "a.safetensors"), p_a, 0.6)
    model = _apply(ext, model, _load(ext, tmp_path, sd_b, "b.safetensors"), p_b, 1.3)
    cond, uncond = _run(model)
    reference = fm.diffusers_load_xlabs(copy.deepcopy(twin), [sd_a, sd_b], [0.6, 1.3])
    x, ctx_c, ctx_u, y_c, y_u = fm.inputs(3)
    tokens_c = [fm.diffusers_tokens(sd_a, p_a.embeds, 4), fm.diffusers_tokens(sd_b, p_b.embeds, 16)]
    tokens_u = [fm.diffusers_tokens(sd_a, p_a.uncond_embeds, 4), fm.diffusers_tokens(sd_b, p_b.uncond_embeds, 16)]
    assert rel_err(cond, fm.diffusers_velocity(reference, x, fm.SIGMA, ctx_c, y_c, tokens_c)) <= 1e-4
    assert rel_err(uncond, fm.diffusers_velocity(reference, x, fm.SIGMA, ctx_u, y_u, tokens_u)) <= 1e-4


def test_weight_zero_and_steps_outside_the_range_are_bit_identical(ext, flux, tmp_path):
    import flux_models as fm
    patcher, _ = flux
    adapter = _load(ext, tmp_path, fm.xlabs_adapter(4), "a.safetensors")
    prompt = random_prompt(ext, 1, 6)
    plain = _run(patcher)
    sampling = patcher.get_model_object("model_sampling")
    assert sampling.percent_to_sigma(0.9) < fm.SIGMA < sampling.percent_to_sigma(0.1)
    for weight, start, end in [(0.0, 0.0, 1.0), (1.0, 0.9, 1.0), (1.0, 0.0, 0.1), (1.0, 0.5, 0.5)]:
        out = _run(_apply(ext, patcher, adapter, prompt, weight, start, end))
        assert all(torch.equal(a, b) for a, b in zip(out, plain)), (weight, start, end)
    inside = _run(_apply(ext, patcher, adapter, prompt, 1.0, 0.1, 0.9))
    assert not torch.equal(inside[0], plain[0])


class _Recorder:
    """A foreign ``dit`` patch standing in another extension's: runs what it wraps and records its image tokens."""

    def __init__(self, wrapped, log, name):
        self.wrapped, self.log, self.name = wrapped, log, name

    def __deepcopy__(self, memo):  # the host's clone copies model_options: keep one log
        return self

    def __call__(self, args, extra):
        out = self.wrapped(args, extra) if self.wrapped is not None else extra["original_block"](args)
        self.log.setdefault(self.name, []).append(out["img"].clone())
        return out


def test_mask_confines_each_block_branch_to_the_masked_tokens(ext, flux, tmp_path):
    """The branch a block adds is zero outside the mask and acts inside it. (The model's output changes outside
    too: the next blocks' joint attention mixes the tokens, as the reference's would.)"""
    import flux_models as fm
    patcher, _ = flux
    log = {}
    inner = patcher.clone()
    for i in range(19):
        inner.set_model_patch_replace(_Recorder(None, log, ("inner", i)), "dit", "double_block", i)
    mask = torch.zeros(1, 64, 64)  # pixel space: 8x the 8x8 latent, 32x the 2x2-patch token grid (4x4)
    mask[:, :, :32] = 1.0  # left half
    patched = _apply(ext, inner, _load(ext, tmp_path, fm.xlabs_adapter(4), "a.safetensors"),
                     random_prompt(ext, 1, 6), attn_mask=mask)
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(dit[("double_block", i)].inner is not None for i in range(19))  # the foreign patch is kept
    for i in range(19):
        patched.set_model_patch_replace(_Recorder(dit[("double_block", i)], log, ("outer", i)), "dit",
                                        "double_block", i)
    _run(patched)
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    left = left.flatten()  # (L,) tokens in row-major (h w) order
    for i in range(19):
        delta = log[("outer", i)][0] - log[("inner", i)][0]  # (B, L, H): the image branch of block i
        assert torch.equal(delta[:, ~left], torch.zeros_like(delta[:, ~left])), i
        assert delta[:, left].abs().amin(dim=-1).gt(0).all(), i


def test_only_the_double_blocks_are_hooked_and_forward_is_untouched(ext, flux, tmp_path):
    import comfy.ldm.flux.model
    import flux_models as fm
    patcher, _ = flux
    patched = _apply(ext, patcher, _load(ext, tmp_path, fm.xlabs_adapter(4), "a.safetensors"),
                     random_prompt(ext, 1, 6))
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", i) for i in range(19)}
    assert "patches_replace" not in patcher.model_options.get("transformer_options", {})  # input left alone
    net = patched.get_model_object("diffusion_model")
    assert "forward" not in vars(net) and type(net).forward is comfy.ldm.flux.model.Flux.forward
    clone = patched.clone()
    assert all(clone.model_options["transformer_options"]["patches_replace"]["dit"][k] is dit[k] for k in dit)


def test_custom_block_weights_patch_only_the_named_blocks(ext, flux, tmp_path):
    import flux_models as fm
    patcher, _ = flux
    adapter = _load(ext, tmp_path, fm.xlabs_adapter(4), "a.safetensors")
    patched = _apply(ext, patcher, adapter, random_prompt(ext, 1, 6), 2.0, layer_preset="custom",
                     custom_layer_weights="double 3=0.5, double 10=1")
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert {k: p.branches[0].weight for k, p in dit.items()} == {("double_block", 3): 1.0,
                                                                  ("double_block", 10): 2.0}


def test_wrong_pairings_are_refused_by_name(ext, flux, tmp_path):
    import flux_models as fm
    from parity_models import host_model
    from tiny_adapters import save_and_load, tiny_adapter
    patcher, _ = flux
    errors = ext.ipadapter_core
    xlabs = _load(ext, tmp_path, fm.xlabs_adapter(4), "xlabs.safetensors")
    with pytest.raises(errors.ModelMismatchError, match="for Flux models; this model is a UNetModel"):
        _apply(ext, host_model("sd15", 32, 32), xlabs, random_prompt(ext, 1, 6))
    narrow = _load(ext, tmp_path, fm.xlabs_adapter(4, hidden=64), "wide.safetensors")
    with pytest.raises(errors.ModelMismatchError, match="width 64, but this model has 57 blocks of width 32"):
        _apply(ext, patcher, narrow, random_prompt(ext, 1, 6))
    sd15 = save_and_load(ext, tmp_path, tiny_adapter("base", [64] * 16, 3), "sd15.safetensors")
    with pytest.raises(errors.ModelMismatchError, match="SD1.5 or SDXL UNet; this model is a Flux"):
        _apply(ext, patcher, sd15, random_prompt(ext, 1, 6))
    with pytest.raises(errors.InputError, match="unfold_batch and frame_weights are for SD1.5/SDXL"):
        _apply(ext, patcher, xlabs, random_prompt(ext, 2, 6), unfold_batch=True)


def test_vit_l_from_the_host_loader_feeds_a_flux_adapter(ext, flux, tmp_path):
    """A random CLIP ViT-L/14 file in the published layout, loaded by the host's own CLIP vision loader, encoded by
    Encode Image Prompt: its projected embeds (768) drive an XLabs adapter on the host Flux."""
    import comfy.clip_vision
    import flux_models as fm
    import host_models
    path = tmp_path / "clip-vit-large-patch14.safetensors"
    host_models.write_random_safetensors(str(path), host_models.clip_vision_specs("l"), seed=0)
    clip_vision = comfy.clip_vision.load(str(path))
    with torch.inference_mode():
        prompt = ext.host.vision.encode_image_prompt(clip_vision, torch.rand(1, 64, 48, 3))
    assert prompt.embeds.shape == (1, 768) and prompt.hidden.shape == (1, 257, 1024)
    adapter = _load(ext, tmp_path, fm.xlabs_adapter(3, embed=768), "xlabs.safetensors")
    assert adapter.spec.encoder == "CLIP ViT-L/14" and prompt.encoder == "CLIP ViT-L/14"
    patcher, _ = flux
    cond, _ = _run(_apply(ext, patcher, adapter, prompt, 1.0))
    assert torch.isfinite(cond).all() and not torch.equal(cond, _run(patcher)[0])
