"""SigLIP's pooled embedding: our attention-pooling head against transformers' SiglipMultiheadAttentionPoolingHead,
the host's SigLIP tower plus the head found by contents against transformers' SiglipVisionModel.pooler_output,
how the head's file is found (by contents, never by name), and malformed heads
(docs/inference.md#siglip-pooled-embedding)."""
import json

import pytest
import safetensors.torch
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import rel_err

transformers_siglip = pytest.importorskip("transformers.models.siglip.modeling_siglip")
needs_host = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
WIDTH, INTERMEDIATE, HEADS = 48, 64, 4  # the tiny tower and head
IMAGE, PATCH, LAYERS = 42, 14, 3  # 3 x 3 = 9 tokens


def _head_module():
    from ipadapter_suite.ipadapter_core import siglip_head
    return siglip_head


def _random_like(state, seed, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * scale + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
            for k, v in state.items()}


def _reference_head(seed=0, width=WIDTH, heads=HEADS):
    config = transformers_siglip.SiglipVisionConfig(hidden_size=width, intermediate_size=INTERMEDIATE,
                                                    num_attention_heads=heads)
    ref = transformers_siglip.SiglipMultiheadAttentionPoolingHead(config).eval()
    ref.load_state_dict(_random_like(ref.state_dict(), seed))
    return ref


# ------------------------------------------------------------------------------------------------ core

def test_the_head_equals_transformers_pooling_head():
    sh = _head_module()
    ref = _reference_head(seed=1)
    ours = sh.build_pooling_head({k: v.clone() for k, v in ref.state_dict().items()}, heads=HEADS)
    assert set(ours.state_dict()) == set(ref.state_dict())
    hidden = torch.randn(3, 9, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(hidden)
    with torch.inference_mode():
        got = ours(hidden)
    assert got.shape == (3, WIDTH) and got.dtype == torch.float32
    assert rel_err(got, expected) <= 1e-5
    assert ours.layernorm.eps == 1e-6 and not ours.training and not any(p.requires_grad for p in ours.parameters())


def test_the_so400m_head_builds_and_loads_strictly_on_meta():
    """The published keys and shapes (transformers' head with so400m's config, on the meta device)."""
    sh = _head_module()
    config = transformers_siglip.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_attention_heads=16)
    with torch.device("meta"):
        published = transformers_siglip.SiglipMultiheadAttentionPoolingHead(config).state_dict()
    assert {k: tuple(v.shape) for k, v in published.items()} == sh.head_shapes(sh.SO400M_WIDTH,
                                                                                 sh.SO400M_INTERMEDIATE)
    head = sh.build_pooling_head(published, heads=16, width=1152)
    assert head.probe.shape == (1, 1, 1152) and head.mlp.fc1.weight.shape == (4304, 1152)
    assert head.attention.num_heads == 16 and head.probe.device.type == "meta"


def _broken(change):
    state = {k: v.clone() for k, v in _reference_head().state_dict().items()}
    change(state)
    return state


@pytest.mark.parametrize("change, error, words", [
    (lambda s: s.pop("mlp.fc2.bias"), "AdapterFileError", "'vision_model.head.mlp.fc2.bias' is missing"),
    (lambda s: s.update({"attention.in_proj_weight": torch.zeros(2 * WIDTH, WIDTH)}), "AdapterFileError",
     r"'vision_model.head.attention.in_proj_weight' has shape \[96, 48\], expected \[144, 48\]"),
    (lambda s: s.update({"layernorm.bias": torch.zeros(WIDTH, dtype=torch.int64)}), "AdapterFileError",
     "'vision_model.head.layernorm.bias' is torch.int64, not floating point"),
    (lambda s: s["mlp.fc1.weight"].__setitem__((0, 0), float("nan")), "AdapterFileError",
     "'vision_model.head.mlp.fc1.weight' has NaN/Inf"),
    (lambda s: s.update({"attention.bias_k": torch.zeros(1, 1, WIDTH)}), "AdapterFileError",
     "unexpected key.*'?vision_model.head.attention.bias_k"),
])
def test_malformed_head_tensors_are_refused_naming_the_key(change, error, words):
    sh = _head_module()
    with pytest.raises(getattr(sh, error), match=words):
        sh.build_pooling_head(_broken(change), heads=HEADS)


def test_a_head_of_another_width_is_an_encoder_mismatch():
    sh = _head_module()
    with pytest.raises(sh.EncoderMismatchError, match="width 48.*encoder's is 32"):
        sh.build_pooling_head(_broken(lambda s: None), heads=HEADS, width=32)


# ------------------------------------------------------------------------------------------------ host

def _host_siglip(tmp_path, seed=0):
    """A host ClipVisionModel of the SigLIP kind (tiny config) loaded from random fp32 weights, and those weights
    (as a file would hold them; the host may keep them in another dtype)."""
    import comfy.clip_vision
    config = {"hidden_size": WIDTH, "image_size": IMAGE, "intermediate_size": INTERMEDIATE, "num_channels": 3,
              "model_type": "siglip_vision_model", "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
              "patch_size": PATCH, "hidden_act": "gelu_pytorch_tanh", "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    path = tmp_path / f"siglip_{seed}.json"
    path.write_text(json.dumps(config))
    model = comfy.clip_vision.ClipVisionModel(str(path))
    tower = _random_like(model.get_sd(), seed)
    model.load_sd(tower)
    return model, tower


def _head_state(seed):
    return {f"vision_model.head.{k}": v for k, v in _reference_head(seed).state_dict().items()}


@pytest.fixture
def clip_folder(ext, tmp_path):
    """A temporary folder added to the host's clip_vision folders (removed after the test)."""
    import folder_paths
    folder = tmp_path / "clip_vision"
    folder.mkdir()
    folder_paths.add_model_folder_path("clip_vision", str(folder))
    yield folder
    folder_paths.folder_names_and_paths["clip_vision"][0].remove(str(folder))


@needs_host
def test_the_pooled_embedding_through_the_host_equals_transformers(ext, tmp_path, clip_folder):
    """encode_image_prompt's embeds for SigLIP = transformers' SiglipVisionModel.pooler_output with the same
    weights on the same pixels. The host's tower LayerNorms use eps 1e-5 (transformers' config is set alike, so
    the comparison is fair); the head's LayerNorm is SigLIP's own 1e-6 in both."""
    import comfy.clip_vision
    siglip, tower = _host_siglip(tmp_path, seed=3)
    head = _head_state(seed=4)
    safetensors.torch.save_file({**tower, **head}, str(clip_folder / "renamed.safetensors"))
    images = torch.rand(3, 50, 40, 3, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        prompt = ext.host.vision.encode_image_prompt(siglip, images, fit="squash")
    config = transformers_siglip.SiglipVisionConfig(
        hidden_size=WIDTH, intermediate_size=INTERMEDIATE, num_attention_heads=HEADS, num_hidden_layers=LAYERS,
        image_size=IMAGE, patch_size=PATCH, layer_norm_eps=1e-5)
    ref = transformers_siglip.SiglipVisionModel(config).eval()
    as_loaded = {k: v.float() for k, v in siglip.get_sd().items()}  # the host's weights (its dtype), in float32
    # transformers 5 keeps the tower's modules at the top of SiglipVisionModel (keys without "vision_model."), 4.x
    # under its vision_model
    nested = "vision_model.head.probe" in ref.state_dict()
    ref.load_state_dict({k if nested else k.removeprefix("vision_model."): v for k, v in {**as_loaded, **head}.items()},
                        strict=True)
    (ref.vision_model.head if nested else ref.head).layernorm.eps = 1e-6
    pixels = comfy.clip_vision.clip_preprocess(images, size=IMAGE, mean=[0.5] * 3, std=[0.5] * 3, crop=False)
    with torch.no_grad():
        expected = ref(pixel_values=pixels.float()).pooler_output
    assert prompt.embeds.shape == (3, WIDTH) and prompt.hidden.shape == (3, 9, WIDTH)
    assert rel_err(prompt.embeds, expected) <= 1e-4
    assert torch.equal(prompt.uncond_embeds, torch.zeros(3, WIDTH))


@needs_host
def test_the_file_with_the_loaded_weights_and_a_head_is_picked_by_contents(ext, tmp_path, clip_folder):
    """Files with a head and other weights (one named like the official file, one with only post_layernorm
    changed by one step), the loaded weights without a head, a pickled file: none of them; the right file is a
    full SiglipModel (vision and text towers) under an unrelated name, as .sft."""
    sh = ext.host.siglip_head
    siglip, tower = _host_siglip(tmp_path, seed=6)
    _, other = _host_siglip(tmp_path, seed=7)
    right, wrong = _head_state(seed=8), _head_state(seed=9)
    nudged = {**tower, "vision_model.post_layernorm.weight": torch.nextafter(
        tower["vision_model.post_layernorm.weight"], torch.tensor(2.0))}
    text = {"text_model.embeddings.token_embedding.weight": torch.randn(10, WIDTH), "logit_scale": torch.ones(1)}
    safetensors.torch.save_file({**other, **wrong}, str(clip_folder / "model.safetensors"))
    safetensors.torch.save_file({**nudged, **wrong}, str(clip_folder / "a_nudged.safetensors"))
    safetensors.torch.save_file(tower, str(clip_folder / "b_no_head.safetensors"))
    torch.save({**tower, **wrong}, str(clip_folder / "c_pickled.bin"))
    safetensors.torch.save_file({**tower, **right, **text}, str(clip_folder / "zz_siglip_full.sft"))
    head = sh.pooling_head(siglip)
    assert head is not None and torch.equal(head.probe, right["vision_model.head.probe"])
    assert sh.pooling_head(siglip) is head  # cached per model object
    assert sh._loaded_fingerprint(siglip)["vision_model.embeddings.patch_embedding.bias"].dtype == siglip.dtype


@needs_host
def test_no_matching_file_gives_none_and_the_message_then_a_new_file_is_found(ext, tmp_path, clip_folder):
    from ipadapter_suite.ipadapter_core import NO_POOLING_HEAD
    sh = ext.host.siglip_head
    siglip, tower = _host_siglip(tmp_path, seed=10)
    _, other = _host_siglip(tmp_path, seed=11)
    safetensors.torch.save_file({**other, **_head_state(12)}, str(clip_folder / "siglip-so400m-patch14-384.sft"))
    assert sh.pooling_head(siglip) is None
    message = sh.no_pooling_head_message()
    assert message.startswith(NO_POOLING_HEAD) and "vision_model.head" in message
    assert "google/siglip-so400m-patch14-384" in message and "model.safetensors" in message
    assert "siglip-so400m-patch14-384.sft → SigLIP weights with a pooling head" in message
    with torch.inference_mode():
        prompt = ext.host.vision.encode_image_prompt(siglip, torch.rand(1, IMAGE, IMAGE, 3))
    assert prompt.embeds.shape == (1, 9, WIDTH)  # no head: the host's token states, as before
    safetensors.torch.save_file({**tower, **_head_state(13)}, str(clip_folder / "added.safetensors"))
    assert sh.pooling_head(siglip) is not None  # "not found" holds only until a file changes


@needs_host
def test_clip_encoders_get_no_head_and_read_no_file(ext, tmp_path, clip_folder, monkeypatch):
    import host_models
    sh = ext.host.siglip_head

    def fail(*args, **kwargs):
        raise AssertionError("a clip_vision file was read for a CLIP encoder")
    monkeypatch.setattr(sh, "_SCAN", fail)
    monkeypatch.setattr(sh, "_listed", fail)
    clip = host_models.tiny_clip_vision(tmp_path, seed=0)
    assert sh.pooling_head(clip) is None
    with torch.inference_mode():
        prompt = ext.host.vision.encode_image_prompt(clip, torch.rand(2, 28, 28, 3))
    assert prompt.embeds.shape == (2, host_models.TINY_CLIP_VISION["projection_dim"])


@needs_host
def test_a_malformed_head_in_the_matching_file_is_refused_naming_file_and_key(ext, tmp_path, clip_folder):
    from ipadapter_suite.ipadapter_core import AdapterFileError
    siglip, tower = _host_siglip(tmp_path, seed=14)
    head = _head_state(15)
    head["vision_model.head.mlp.fc1.weight"] = head["vision_model.head.mlp.fc1.weight"][:, :7].contiguous()
    safetensors.torch.save_file({**tower, **head}, str(clip_folder / "broken.safetensors"))
    with pytest.raises(AdapterFileError, match=r"clip_vision/broken.safetensors: .*'vision_model.head.mlp.fc1.weight'"
                                               r" has shape \[64, 7\]"):
        with torch.inference_mode():
            ext.host.vision.encode_image_prompt(siglip, torch.rand(1, IMAGE, IMAGE, 3))


@needs_host
def test_negative_image_and_enhancer_tiles_are_pooled_alike(ext, tmp_path, clip_folder):
    vision = ext.host.vision
    siglip, tower = _host_siglip(tmp_path, seed=16)
    safetensors.torch.save_file({**tower, **_head_state(17)}, str(clip_folder / "siglip.safetensors"))
    g = torch.Generator().manual_seed(18)
    image, negative = torch.rand(2, IMAGE, IMAGE, 3, generator=g), torch.rand(1, IMAGE, IMAGE, 3, generator=g)
    with torch.inference_mode():
        prompt = vision.encode_image_prompt(siglip, image, negative_image=negative)
        alone = vision.encode_image_prompt(siglip, negative)
        tiled = vision.encode_tiled(siglip, torch.rand(1, 2 * IMAGE, 2 * IMAGE, 3, generator=g),
                                    tile_mode="enhancer", enhance_ratio=0.5)
    assert prompt.uncond_embeds.shape == (2, WIDTH)
    assert torch.allclose(prompt.uncond_embeds, alone.embeds.expand(2, -1), rtol=0, atol=1e-6)
    assert tiled.prompt.embeds.shape == (1, WIDTH) and torch.isfinite(tiled.prompt.embeds).all()


def test_the_enhancer_merges_siglip_states_without_a_class_token():
    """SigLIP's hidden states are g² patch tokens (no class token): tiles of constant value c merge to c."""
    from ipadapter_suite.ipadapter_core.tiles import merge_tile_hidden
    full = torch.randn(2, 9, WIDTH)
    tiles = torch.full((2 * 2 * 2, 9, WIDTH), 3.0)  # (n * tiles², g², W)
    merged = merge_tile_hidden(full, tiles, 2, 0.25)
    assert merged.shape == (2, 9, WIDTH)
    assert torch.allclose(merged, 0.25 * full + 0.75 * 3.0)
