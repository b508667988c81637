"""The existing controls with FaceID (tiny SD1.5 layout): stacked with a CLIP plus adapter (against diffusers'
multi-adapter with the LoRA merged), unfold_batch (face i conditions frame i) and an all-zero attention mask."""
import copy

import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from test_faceid_parity import _PAIRS, _pair, _save_and_load, host_eps_with_weights, merge_lora
from tiny_adapters import SIGMA, random_prompt, rel_err, save_and_load, tiny_adapter, tiny_inputs
from tiny_faceid import face_prompt, tiny_faceid

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


@pytest.fixture(scope="module", autouse=True)
def _free_pairs():
    yield
    _PAIRS.clear()


def test_faceid_stacked_with_a_plus_adapter_equals_diffusers(host, ext, tmp_path):
    from parity_models import diffusers_eps, diffusers_set_scale
    patcher, unet, info = _pair("sd15")
    widths = [w for _, w in info["cross_attn"]]
    sd_face, sd_plus = tiny_faceid("faceid", widths, 31), tiny_adapter("plus", widths, 32)
    faces, image = face_prompt(ext, 1, seed=3), random_prompt(ext, 1, 4)
    options = ext.host.patching.ApplyOptions(lora_strength=0.5)
    model = ext.host.patching.apply_ip_adapter(patcher, _save_and_load(ext, tmp_path, sd_face, "auto"), faces,
                                               0.9, 0.0, 1.0, options)
    model = ext.host.patching.apply_ip_adapter(model, save_and_load(ext, tmp_path, sd_plus, "p.safetensors"),
                                               image, 0.6, 0.0, 1.0)
    x, ctx_cond, ctx_uncond = tiny_inputs(5)
    eps_cond, eps_uncond = host_eps_with_weights(model, x, [ctx_cond, ctx_uncond])

    reference = copy.deepcopy(unet)
    merge_lora(reference, sd_face["ip_adapter"], 0.5)
    reference._load_ip_adapter_weights([sd_face, sd_plus], low_cpu_mem_usage=False)
    diffusers_set_scale(reference.float().eval(), [0.9, 0.6])
    ref_cond = diffusers_eps(reference, patcher, x, SIGMA, ctx_cond,
                             {"image_embeds": [faces.embeds[None], image.hidden[None]]})
    ref_uncond = diffusers_eps(reference, patcher, x, SIGMA, ctx_uncond,
                               {"image_embeds": [torch.zeros(1, 1, 512), image.uncond_hidden[None]]})
    assert rel_err(eps_cond, ref_cond) <= 1e-4
    assert rel_err(eps_uncond, ref_uncond) <= 1e-4


def test_unfold_gives_each_frame_its_face_and_a_zero_mask_removes_the_branch(host, ext, tmp_path):
    patcher, _, info = _pair("sd15")
    adapter = _save_and_load(ext, tmp_path, tiny_faceid("portrait", [w for _, w in info["cross_attn"]], 41), "auto")
    faces = face_prompt(ext, 2, seed=7)
    x, ctx_cond, ctx_uncond = tiny_inputs(6)
    x2 = torch.cat([x, torch.flip(x, dims=[2])])  # 2 frames
    apply = ext.host.patching.apply_ip_adapter
    unfolded = apply(patcher, adapter, faces, 1.0, 0.0, 1.0, ext.host.patching.ApplyOptions(unfold_batch=True))
    both = host_eps_with_weights(unfolded, x2, [ctx_cond, ctx_uncond])
    core = ext.ipadapter_core
    for i in range(2):
        one = core.FacePrompt(faces.embeds[i:i + 1], faces.raw[i:i + 1], sources=(0,))
        single = host_eps_with_weights(apply(patcher, adapter, one, 1.0, 0.0, 1.0), x2[i:i + 1],
                                       [ctx_cond, ctx_uncond])
        assert rel_err(both[0][i:i + 1], single[0]) <= 1e-5 and rel_err(both[1][i:i + 1], single[1]) <= 1e-5
    masked = apply(patcher, adapter, faces, 1.0, 0.0, 1.0,
                   ext.host.patching.ApplyOptions(attn_mask=torch.zeros(16, 16)))
    off = apply(patcher, adapter, faces, 0.0, 0.0, 1.0)
    out, ref = host_eps_with_weights(masked, x, [ctx_cond]), host_eps_with_weights(off, x, [ctx_cond])
    assert torch.allclose(out[0], ref[0], atol=1e-6)


def _split(ext, faces, i):
    core = ext.ipadapter_core
    crops = faces.hidden is not None
    return core.FacePrompt(faces.embeds[i:i + 1], faces.raw[i:i + 1], faces.hidden[i:i + 1] if crops else None,
                           faces.uncond_hidden[i:i + 1] if crops else None, (0,))


def test_face_prompts_combine_face_by_face(ext):
    """concat keeps every face in order (the same tensors as one Encode Face Prompt of both images); average,
    weighted average and the incumbent's methods make one face of those embeddings and crops, against the
    formulas; a face prompt with a CLIP image prompt, or crops with no crops, are refused."""
    core = ext.ipadapter_core
    faces = face_prompt(ext, 3, seed=11, crops=True)
    parts = [_split(ext, faces, i) for i in range(3)]
    together = core.combine_prompts(parts, "concat")
    for name in ("embeds", "raw", "hidden", "uncond_hidden"):
        assert torch.equal(getattr(together, name), getattr(faces, name)), name
    assert together.sources == (0, 1, 2)
    mean = core.combine_prompts(parts, "weighted average", "1, 2, 1")
    w = torch.tensor([0.25, 0.5, 0.25])
    assert mean.count == 1 and mean.sources == (0,)
    assert torch.allclose(mean.embeds[0], (w[:, None] * faces.embeds).sum(0), atol=1e-6)
    assert torch.allclose(mean.hidden[0], (w[:, None, None] * faces.hidden).sum(0), atol=1e-6)
    sub = core.combine_prompts(parts, "subtract")
    assert torch.allclose(sub.raw[0], faces.raw[0] - faces.raw[1:].mean(0), atol=1e-6)
    assert torch.equal(sub.uncond_hidden, faces.uncond_hidden[:1])  # the first face's negative
    with pytest.raises(core.InputError, match="a face prompt .* and a CLIP image prompt .* cannot be combined"):
        core.combine_prompts([parts[0], random_prompt(ext, 1, 2)])
    bare = face_prompt(ext, 1, seed=12)
    with pytest.raises(core.InputError, match="some face prompts have face crops"):
        core.combine_prompts([parts[0], bare])


@pytest.mark.parametrize("crops", [False, True])
def test_face_prompts_save_and_load_bit_for_bit(ext, tmp_path, crops):
    core = ext.ipadapter_core
    faces = face_prompt(ext, 2, seed=13, crops=crops)
    faces = core.combine_prompts([faces, face_prompt(ext, 1, seed=14, crops=crops)])  # sources 0, 1, 2
    core.save_image_prompt(tmp_path / "face.safetensors", faces)
    loaded = core.load_image_prompt(tmp_path / "face.safetensors")
    assert isinstance(loaded, core.FacePrompt) and loaded.sources == faces.sources
    for name, tensor in faces.named_tensors():
        assert torch.equal(getattr(loaded, name), tensor), name
    assert (loaded.hidden is None) == (not crops)
    import safetensors.torch
    tensors = safetensors.torch.load_file(str(tmp_path / "face.safetensors"))
    del tensors["face_raw"]
    safetensors.torch.save_file(tensors, str(tmp_path / "broken.safetensors"))
    with pytest.raises(core.AdapterFileError, match="not a complete saved face prompt .*face_raw"):
        core.load_image_prompt(tmp_path / "broken.safetensors")


def test_a_combined_face_prompt_applies_as_one_encode_of_all_faces(host, ext, tmp_path):
    patcher, _, info = _pair("sd15")
    adapter = _save_and_load(ext, tmp_path, tiny_faceid("faceid", [w for _, w in info["cross_attn"]], 51), "auto")
    faces = face_prompt(ext, 2, seed=15)
    combined = ext.ipadapter_core.combine_prompts([_split(ext, faces, 0), _split(ext, faces, 1)])
    x, ctx_cond, ctx_uncond = tiny_inputs(7)
    apply = ext.host.patching.apply_ip_adapter
    a = host_eps_with_weights(apply(patcher, adapter, faces, 0.8, 0.0, 1.0), x, [ctx_cond, ctx_uncond])
    b = host_eps_with_weights(apply(patcher, adapter, combined, 0.8, 0.0, 1.0), x, [ctx_cond, ctx_uncond])
    assert all(torch.equal(p, q) for p, q in zip(a, b))
