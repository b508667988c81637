"""InstantX SD3.5-Large IP-Adapter in the real host: the patched host MMDiT against diffusers'
SD3IPAdapterJointAttnProcessor2_0 + IPAdapterTimeImageProjection with the same weights (tiny widths, the real
38 joint blocks, fp32), and what the controls do."""
import copy

import pytest
import safetensors.torch
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import apply_adapter, random_prompt, rel_err

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


@pytest.fixture(scope="module")
def sd3(host):
    import sd3_models
    patcher = sd3_models.host_sd3(seed=1)
    return patcher, sd3_models.diffusers_sd3(patcher)


def _load(ext, tmp_path, sd, name="ip-adapter.safetensors"):
    path = tmp_path / name
    if path.suffix == ".bin":
        torch.save(sd, str(path))
    else:
        safetensors.torch.save_file({f"{part}.{k}": v for part in sd for k, v in sd[part].items()}, str(path))
    return ext.host.files.load_adapter(str(path))


_apply = apply_adapter


def _run(patcher, seed=3):
    import flux_models
    import sd3_models as sm
    x, ctx_c, ctx_u, y_c, y_u = sm.inputs(seed)
    return flux_models.host_velocity(patcher, x, sm.SIGMA, [(ctx_c, y_c), (ctx_u, y_u)])


def test_patched_host_sd35_equals_diffusers(ext, sd3, tmp_path):
    import sd3_models as sm
    patcher, twin = sd3
    sd = sm.instantx_adapter(5)
    prompt = random_prompt(ext, 1, seed=7)
    adapter = _load(ext, tmp_path, sd)
    assert adapter.spec.kind == "instantx_sd35"
    from_bin = _load(ext, tmp_path, sd, "ip-adapter.bin")  # the published file is a weights-only torch file
    assert from_bin.spec == adapter.spec
    assert all(torch.equal(a, b) for a, b in zip(from_bin.model.state_dict().values(),
                                                 adapter.model.state_dict().values()))
    cond, uncond = _run(_apply(ext, patcher, adapter, prompt, 0.8))
    reference = sm.diffusers_load_instantx(copy.deepcopy(twin), copy.deepcopy(sd), 0.8)
    x, ctx_c, ctx_u, y_c, y_u = sm.inputs(3)
    ref_c = sm.diffusers_velocity(reference, x, sm.SIGMA, ctx_c, y_c, {"ip_adapter_image_embeds": prompt.hidden})
    ref_u = sm.diffusers_velocity(reference, x, sm.SIGMA, ctx_u, y_u,
                                  {"ip_adapter_image_embeds": prompt.uncond_hidden})
    assert rel_err(cond, ref_c) <= 1e-4
    assert rel_err(uncond, ref_u) <= 1e-4
    assert rel_err(cond, _run(patcher)[0]) > 1e-3  # the image prompt really acts


def test_weight_zero_and_steps_outside_the_range_are_bit_identical(ext, sd3, tmp_path):
    import sd3_models as sm
    patcher, _ = sd3
    adapter = _load(ext, tmp_path, sm.instantx_adapter(4))
    prompt = random_prompt(ext, 1, 6)
    plain = _run(patcher)
    sampling = patcher.get_model_object("model_sampling")
    assert sampling.percent_to_sigma(0.9) < sm.SIGMA < sampling.percent_to_sigma(0.1)
    for weight, start, end in [(0.0, 0.0, 1.0), (1.0, 0.9, 1.0), (1.0, 0.0, 0.1)]:
        out = _run(_apply(ext, patcher, adapter, prompt, weight, start, end))
        assert all(torch.equal(a, b) for a, b in zip(out, plain)), (weight, start, end)


class _Reference:
    """A foreign ``dit`` patch: runs the block as given and, beside it, without the attention override the
    IP-Adapter patch put in its options, so each block's image branch can be read off."""

    def __init__(self, log, index):
        self.log, self.index = log, index

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        out = extra["original_block"](args)
        options = {k: v for k, v in args["transformer_options"].items() if k != "optimized_attention_override"}
        plain = extra["original_block"]({**args, "transformer_options": options})
        txt = None if out["txt"] is None else out["txt"] - plain["txt"]  # the last block's text stream ends
        self.log.append((self.index, out["img"] - plain["img"], txt))
        return out


def test_mask_confines_each_block_branch_to_the_masked_tokens(ext, sd3, tmp_path):
    import sd3_models as sm
    patcher, _ = sd3
    log = []
    inner = patcher.clone()
    for i in range(sm.BLOCKS):
        inner.set_model_patch_replace(_Reference(log, i), "dit", "double_block", i)
    mask = torch.zeros(1, 64, 64)
    mask[:, :32, :] = 1.0  # top half of the 4x4 token grid
    patched = _apply(ext, inner, _load(ext, tmp_path, sm.instantx_adapter(4)), random_prompt(ext, 1, 6),
                     attn_mask=mask)
    _run(patched)
    top = torch.zeros(4, 4, dtype=torch.bool)
    top[:2] = True
    top = top.flatten()
    assert sorted({i for i, _, _ in log}) == list(range(sm.BLOCKS))
    for i, img, txt in log:
        assert torch.equal(img[:, ~top], torch.zeros_like(img[:, ~top])), i
        assert img[:, top].abs().amax(dim=-1).gt(0).all(), i
        assert txt is None or torch.equal(txt, torch.zeros_like(txt)), i  # the text stream is not touched


def test_hooks_only_and_wrong_pairings(ext, sd3, tmp_path):
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import flux_models as fm
    import sd3_models as sm
    patcher, _ = sd3
    adapter = _load(ext, tmp_path, sm.instantx_adapter(4))
    patched = _apply(ext, patcher, adapter, random_prompt(ext, 1, 6))
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", i) for i in range(sm.BLOCKS)}
    net = patched.get_model_object("diffusion_model")
    assert "forward" not in vars(net) and type(net).forward is mmdit.OpenAISignatureMMDITWrapper.forward
    errors = ext.ipadapter_core
    with pytest.raises(errors.ModelMismatchError, match="for SD3.5 Large; this model is a Flux"):
        _apply(ext, fm.host_flux(seed=0, depth=1, single=1), adapter, random_prompt(ext, 1, 6))
    xlabs_path = tmp_path / "xlabs.safetensors"
    safetensors.torch.save_file(fm.xlabs_adapter(3), str(xlabs_path))
    with pytest.raises(errors.ModelMismatchError, match="for Flux models; this model is a OpenAISignatureMMDIT"):
        _apply(ext, patcher, ext.host.files.load_adapter(str(xlabs_path)), random_prompt(ext, 1, 6))


def test_norm_ratio_path_equals_recomputing_the_raw_query_and_key(ext, sd3, tmp_path):
    """The branch reads the model's own normed q/k times w_adapter / w_model; with the ratios removed it recomputes
    the raw q/k from the block's weights (the path for models whose norms allow no ratio): both agree."""
    import dataclasses

    import sd3_models as sm
    patcher, _ = sd3
    patched = _apply(ext, patcher, _load(ext, tmp_path, sm.instantx_adapter(9)), random_prompt(ext, 1, 4))
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(p.branches[0].ratios is not None for p in dit.values())
    recompute = patched.clone()
    for (kind, i), patch in dit.items():
        branches = tuple(dataclasses.replace(b, ratios=None) for b in patch.branches)
        recompute.set_model_patch_replace(type(patch)(patch.block, branches, patch_size=patch.patch_size,
                                                      weights=patch.weights, inner=patch.inner), "dit", kind, i)
    fast, slow = _run(patched), _run(recompute)
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(fast, slow))


def test_a_siglip_encoder_in_the_host_feeds_the_adapter(ext, sd3, tmp_path):
    """A host ClipVisionModel of the SigLIP kind (tiny config: the host keeps every layer's output and no pooled
    vector for SigLIP) through Encode Image Prompt: its penultimate hidden states drive the SD3.5 adapter."""
    import json

    import comfy.clip_vision
    import sd3_models as sm
    from host_models import TINY_CLIP_VISION
    config = {k: v for k, v in TINY_CLIP_VISION.items() if k != "projection_dim"}  # SigLIP has no projection
    config.update(model_type="siglip_vision_model", hidden_size=48, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    (tmp_path / "siglip.json").write_text(json.dumps(config))
    siglip = comfy.clip_vision.ClipVisionModel(str(tmp_path / "siglip.json"))
    g = torch.Generator().manual_seed(2)
    siglip.load_sd({k: torch.randn(v.shape, generator=g) * 0.2 + (1.0 if "norm" in k and k.endswith("weight") else 0)
                    for k, v in siglip.get_sd().items()})
    siglip.model.float()
    assert siglip.return_all_hidden_states
    with torch.inference_mode():
        prompt = ext.host.vision.encode_image_prompt(siglip, torch.rand(1, 40, 28, 3), fit="squash")
    assert prompt.hidden.shape == (1, 4, 48) and torch.isfinite(prompt.uncond_hidden).all()
    patcher, _ = sd3
    adapter = _load(ext, tmp_path, sm.instantx_adapter(6, embed=48))
    cond, _ = _run(_apply(ext, patcher, adapter, prompt, 0.7))
    assert torch.isfinite(cond).all() and not torch.equal(cond, _run(patcher)[0])
