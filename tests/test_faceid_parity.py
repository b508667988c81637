"""FaceID parity: the patched host model (image branch + the embedded LoRA through the host's weight patches)
against diffusers' UNet2DConditionModel with its own FaceID projections (IPAdapterFaceIDImageProjection,
IPAdapterFaceIDPlusImageProjection) and IP processors loaded from the same file, the LoRA merged into diffusers'
weights independently, as the reference's processors apply it (W x + scale * up(down(x)) on to_q, to_k, to_v,
to_out of attention processor N, N = its index among the UNet's attn_processors). Tiny SD1.5 and SDXL layouts."""
import copy

import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import CTX, SIGMA, rel_err, tiny_inputs
from tiny_faceid import face_prompt, tiny_faceid

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)

# case -> (tiny file kind, faceid_variant, faces, lora_strength, shortcut_weight); SD1.5 runs them all, SDXL the
# two with its LoRA layout (FaceID, Plus v2), to keep the run short.
CASES = {
    "faceid": ("faceid", "auto", 1, 0.7, 1.0),
    "faceid, lora 0": ("faceid", "auto", 1, 0.0, 1.0),
    "plus": ("plus", "plus", 1, 1.0, 1.0),
    "plus v2": ("plus", "plus v2", 1, 0.6, 1.7),
    "portrait, 3 faces": ("portrait", "auto", 3, 1.0, 1.0),
    "portrait unnorm, 2 faces": ("portrait_unnorm", "auto", 2, 1.0, 1.0),
}


SDXL_CASES = ("faceid", "plus v2")
_PAIRS = {}


@pytest.fixture(scope="module", autouse=True)
def _free_pairs():
    """The models go with the module (held to interpreter exit, the host's patcher fails in __del__)."""
    yield
    _PAIRS.clear()


def _pair(layout):
    from parity_models import build_pair
    if layout not in _PAIRS:
        _PAIRS[layout] = build_pair(layout, seed=3, context_dim=CTX)
    return _PAIRS[layout]


def _save_and_load(ext, tmp_path, sd, variant):
    import safetensors.torch
    path = tmp_path / "faceid.safetensors"
    safetensors.torch.save_file({f"{p}.{k}": v.contiguous() for p in sd for k, v in sd[p].items()}, str(path))
    return ext.host.files.load_adapter(str(path), variant)


def host_eps_with_weights(patched, x, contexts):
    """host_eps with the clone's weight patches (the LoRA) applied, as the host's model loading applies them."""
    from parity_models import host_eps
    patched.patch_model()
    try:
        return host_eps(patched, x, SIGMA, contexts)
    finally:
        patched.unpatch_model()


def merge_lora(unet, ip_layers, strength):
    """Attention processor N of diffusers' UNet gets W += strength * up @ down on to_q, to_k, to_v, to_out.0."""
    names = list(unet.attn_processors)
    with torch.no_grad():
        for n, name in enumerate(names):
            attn = unet.get_submodule(name[:-len(".processor")])
            for target, linear in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
                up, down = (ip_layers[f"{n}.to_{target}_lora.{side}.weight"] for side in ("up", "down"))
                linear.weight += strength * (up @ down)


def _diffusers_embeds(kind, prompt):
    """[1, K, 512] face embeddings (raw ones for unnorm, [1, K, 1, 512] for its resampler) for cond / uncond."""
    face = prompt.raw if kind == "portrait_unnorm" else prompt.embeds
    cond, uncond = face[None], torch.zeros_like(face)[None]
    if kind == "portrait_unnorm":
        return cond[:, :, None], uncond[:, :, None]
    return cond, uncond


def _diffusers_reference(unet, sd, lora_strength, scale):
    from parity_models import diffusers_load_ip_adapter, diffusers_set_scale
    reference = copy.deepcopy(unet)
    if lora_strength and any("_lora." in k for k in sd["ip_adapter"]):
        merge_lora(reference, sd["ip_adapter"], lora_strength)
    return diffusers_set_scale(diffusers_load_ip_adapter(reference, sd), scale)


def _diffusers_eps(reference, patcher, kind, variant, prompt, shortcut, x, ctx, row):
    from parity_models import diffusers_eps
    emb = _diffusers_embeds(kind, prompt)[row]
    if kind == "plus":
        projection = reference.encoder_hid_proj.image_projection_layers[0]
        projection.clip_embeds = (prompt.hidden if row == 0 else prompt.uncond_hidden)[None]  # [1, K, P, W]
        projection.shortcut, projection.shortcut_scale = variant == "plus v2", shortcut
    return diffusers_eps(reference, patcher, x, SIGMA, ctx, {"image_embeds": [emb]})


@pytest.mark.parametrize("layout,case", [("sd15", c) for c in CASES] + [("sdxl", c) for c in SDXL_CASES])
def test_patched_host_equals_diffusers(host, ext, tmp_path, layout, case):
    from parity_models import host_eps
    kind, variant, faces, lora_strength, shortcut = CASES[case]
    patcher, unet, info = _pair(layout)
    sd = tiny_faceid(kind, [w for _, w in info["cross_attn"]], seed=11)
    adapter = _save_and_load(ext, tmp_path, sd, variant)
    prompt = face_prompt(ext, faces, seed=5, crops=kind == "plus")
    options = ext.host.patching.ApplyOptions(lora_strength=lora_strength, shortcut_weight=shortcut)
    patched = ext.host.patching.apply_ip_adapter(patcher, adapter, prompt, 0.8, 0.0, 1.0, options)
    x, ctx_cond, ctx_uncond = tiny_inputs(7)
    eps_cond, eps_uncond = host_eps_with_weights(patched, x, [ctx_cond, ctx_uncond])

    reference = _diffusers_reference(unet, sd, lora_strength, 0.8)
    ref_cond = _diffusers_eps(reference, patcher, kind, variant, prompt, shortcut, x, ctx_cond, 0)
    ref_uncond = _diffusers_eps(reference, patcher, kind, variant, prompt, shortcut, x, ctx_uncond, 1)
    assert rel_err(eps_cond, ref_cond) <= 1e-4
    assert rel_err(eps_uncond, ref_uncond) <= 1e-4
    plain = host_eps(patcher, x, SIGMA, [ctx_cond, ctx_uncond])
    assert rel_err(eps_cond, plain[0]) > 1e-3  # the face prompt (and LoRA) really act
    after = host_eps(patcher, x, SIGMA, [ctx_cond, ctx_uncond])
    assert all(torch.equal(a, b) for a, b in zip(after, plain))  # the input model's weights are left alone


def test_plus_v2_differs_from_plus_and_the_lora_acts(host, ext, tmp_path):
    patcher, _, info = _pair("sd15")
    sd = tiny_faceid("plus", [w for _, w in info["cross_attn"]], seed=12)
    prompt = face_prompt(ext, 1, seed=6, crops=True)
    x, ctx_cond, ctx_uncond = tiny_inputs(8)
    outs = {}
    for variant, lora in (("plus", 1.0), ("plus v2", 1.0), ("plus", 0.0)):
        adapter = _save_and_load(ext, tmp_path, sd, variant)
        options = ext.host.patching.ApplyOptions(lora_strength=lora, shortcut_weight=1.3)
        patched = ext.host.patching.apply_ip_adapter(patcher, adapter, prompt, 1.0, 0.0, 1.0, options)
        outs[variant, lora] = host_eps_with_weights(patched, x, [ctx_cond, ctx_uncond])[0]
    assert rel_err(outs["plus v2", 1.0], outs["plus", 1.0]) > 1e-3
    assert rel_err(outs["plus", 0.0], outs["plus", 1.0]) > 1e-3


def test_weight_zero_and_lora_strength_zero_are_the_unpatched_model_bit_for_bit(host, ext, tmp_path):
    from parity_models import host_eps
    patcher, _, info = _pair("sd15")
    adapter = _save_and_load(ext, tmp_path, tiny_faceid("faceid", [w for _, w in info["cross_attn"]], 4), "auto")
    prompt = face_prompt(ext, 1, seed=6)
    x, ctx_cond, ctx_uncond = tiny_inputs(9)
    plain = host_eps(patcher, x, SIGMA, [ctx_cond, ctx_uncond])
    options = ext.host.patching.ApplyOptions(lora_strength=0.0)
    patched = ext.host.patching.apply_ip_adapter(patcher, adapter, prompt, 0.0, 0.0, 1.0, options)
    assert not patched.patches  # no weight patch at all
    out = host_eps_with_weights(patched, x, [ctx_cond, ctx_uncond])
    assert all(torch.equal(a, b) for a, b in zip(out, plain))
    with_lora = ext.host.patching.apply_ip_adapter(patcher, adapter, prompt, 0.0, 0.0, 1.0)
    assert len(with_lora.patches) == 4 * 2 * len(info["cross_attn"])  # q, k, v, out of every attention layer
    assert not torch.equal(host_eps_with_weights(with_lora, x, [ctx_cond, ctx_uncond])[0], plain[0])
