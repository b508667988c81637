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
