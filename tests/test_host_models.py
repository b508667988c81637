"""The random-weight model files of tests/host_models.py load through the host's own loaders, are detected as the
right architectures, load strictly in effect (no missing or unexpected keys), and give finite outputs.

The full ViT-bigG/14 file (3.7 GB, slow on CPU) is only written and run with HOST_MODELS_SLOW=1; without it bigG is
checked from its key layout (detection and strict load through the host, no file, no forward pass).
"""
import contextlib
import os

import pytest
import torch

import host_models

# A real single-file SD1.5 checkpoint has neither: the host expects these two to be missing and does not warn.
CLIP_ALLOWED_MISSING = {"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"}


@contextlib.contextmanager
def recording_loads():
    """Record (module class, missing keys, unexpected keys) of every load_state_dict the host makes."""
    records = []
    original = torch.nn.Module.load_state_dict

    def wrapper(self, state_dict, *args, **kwargs):
        result = original(self, state_dict, *args, **kwargs)
        records.append((type(self).__name__, list(result.missing_keys), list(result.unexpected_keys)))
        return result

    torch.nn.Module.load_state_dict = wrapper
    try:
        yield records
    finally:
        torch.nn.Module.load_state_dict = original


def file_keys(path):
    import safetensors
    with safetensors.safe_open(path, framework="pt") as f:
        return set(f.keys())


def assert_finite(tensor, what):
    assert torch.isfinite(tensor).all(), "{} has NaN/inf".format(what)


@pytest.fixture(scope="module")
def sd15(model_files):
    import comfy.sd
    path = str(model_files["sd15"])
    keys = file_keys(path)
    with recording_loads() as records:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                                     embedding_directory=None)
    return {"path": path, "keys": keys, "records": records, "model": model, "clip": clip, "vae": vae}


@pytest.fixture(scope="module")
def clip_vision_h(model_files):
    import comfy.clip_vision
    path = str(model_files["vit_h"])
    keys = file_keys(path)
    with recording_loads() as records:
        clip_vision = comfy.clip_vision.load(path)
    return {"path": path, "keys": keys, "records": records, "clip_vision": clip_vision}


def test_sd15_detected(sd15):
    import comfy.supported_models
    assert type(sd15["model"].model.model_config) is comfy.supported_models.SD15
    assert sd15["clip"] is not None and sd15["vae"] is not None
    assert os.path.getsize(sd15["path"]) > 2_000_000_000


def test_sd15_file_is_fp16_with_checkpoint_key_names(sd15):
    import safetensors
    keys = sd15["keys"]
    prefixes = (host_models.UNET_PREFIX, "cond_stage_model.transformer.text_model.", host_models.VAE_PREFIX)
    assert all(k.startswith(prefixes) for k in keys)
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in keys), prefix
    with safetensors.safe_open(sd15["path"], framework="pt") as f:
        for key in ["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                    "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                    "first_stage_model.decoder.conv_in.weight"]:
            assert f.get_slice(key).get_dtype() == "F16"
        assert f.get_slice("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight").get_shape() == [320, 768]
        assert f.get_slice("model.diffusion_model.out.2.weight").get_shape() == [4, 320, 3, 3]
        assert f.get_slice("model.diffusion_model.input_blocks.1.1.proj_in.weight").get_shape() == [320, 320, 1, 1]


def test_sd15_loads_strictly(sd15):
    records = sd15["records"]
    loaded = {name for name, _, _ in records}
    assert {"UNetModel", "SD1ClipModel", "AutoencoderKL"} <= loaded, records
    for name, missing, unexpected in records:
        allowed = CLIP_ALLOWED_MISSING if name == "SD1ClipModel" else set()
        assert set(missing) <= allowed, (name, missing)
        assert unexpected == [], (name, unexpected)

    # Every key of the file lands in a host model, and every key of the host models comes from the file.
    model_keys = {host_models.UNET_PREFIX + k for k in sd15["model"].model.diffusion_model.state_dict()}
    model_keys |= {host_models.VAE_PREFIX + k for k in sd15["vae"].first_stage_model.state_dict()}
    clip_sd = sd15["clip"].cond_stage_model.state_dict()
    assert all(k.startswith("clip_l.") for k in clip_sd)
    model_keys |= {"cond_stage_model." + k[len("clip_l."):] for k in clip_sd if k not in CLIP_ALLOWED_MISSING}
    assert model_keys == sd15["keys"]


@torch.inference_mode()  # as the host runs its nodes
def test_sd15_text_encode_sample_decode_finite(sd15):
    import comfy.sample
    clip, model, vae = sd15["clip"], sd15["model"], sd15["vae"]

    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    cond, extra = positive[0]
    assert cond.shape == (1, 77, 768)
    assert extra["pooled_output"].shape == (1, 768)
    assert_finite(cond, "text cond")
    assert_finite(extra["pooled_output"], "pooled output")

    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    samples = comfy.sample.sample(model, noise, 1, 7.0, "euler", "normal", positive, negative, latent,
                                  denoise=1.0, disable_pbar=True, seed=0)
    assert samples.shape == (1, 4, 8, 8)
    assert_finite(samples, "sampled latent")

    image = vae.decode(samples)
    assert image.shape == (1, 64, 64, 3)
    assert_finite(image, "decoded image")
    assert image.std() > 0


@torch.inference_mode()
def test_clip_vision_h_detected_strict_and_finite(clip_vision_h):
    clip_vision = clip_vision_h["clip_vision"]
    assert clip_vision is not None
    config = host_models.clip_vision_config("h")
    assert (config["hidden_size"], config["projection_dim"], config["num_hidden_layers"]) == (1280, 1024, 32)
    model = clip_vision.model
    assert tuple(model.visual_projection.weight.shape) == (1024, 1280)
    assert len(model.vision_model.encoder.layers) == 32

    records = clip_vision_h["records"]
    assert [name for name, _, _ in records] == ["CLIPVisionModelProjection"]
    _, missing, unexpected = records[0]
    assert missing == [] and unexpected == []
    assert set(model.state_dict()) == clip_vision_h["keys"]

    out = clip_vision.encode_image(torch.rand(1, 224, 224, 3))
    assert out["image_embeds"].shape == (1, 1024)
    assert out["penultimate_hidden_states"].shape == (1, 257, 1280)
    assert out["last_hidden_state"].shape == (1, 257, 1280)
    for name in ("image_embeds", "penultimate_hidden_states", "last_hidden_state"):
        assert_finite(out[name], name)
    assert out["image_embeds"].std() > 0


def test_clip_vision_bigg_layout_detected_and_strict(host):
    """bigG from its keys alone: the host's detection picks the G config and loads every key (no file, no forward)."""
    import comfy.clip_vision
    specs = host_models.clip_vision_specs("g")
    # Only keys and shapes matter to detection and key matching: one zero, broadcast to every shape (no memory).
    zero = torch.zeros((), dtype=torch.float16)
    sd = {key: zero.expand(shape) for key, shape in host_models.shapes(specs).items()}
    keys = set(sd)
    with recording_loads() as records:
        clip_vision = comfy.clip_vision.load_clipvision_from_sd(sd)
    assert clip_vision is not None
    model = clip_vision.model
    assert tuple(model.visual_projection.weight.shape) == (1280, 1664)
    assert len(model.vision_model.encoder.layers) == 48
    assert [(name, missing, unexpected) for name, missing, unexpected in records] == [("CLIPVisionModelProjection", [], [])]
    assert set(model.state_dict()) == keys
    del clip_vision, model, sd


@pytest.mark.skipif(os.environ.get("HOST_MODELS_SLOW") != "1",
                    reason="full ViT-bigG/14 file (3.7 GB) and CPU encode: set HOST_MODELS_SLOW=1 to run")
@torch.inference_mode()
def test_clip_vision_bigg_file_full(host, tmp_path):
    import comfy.clip_vision
    path = str(tmp_path / "clip_vision_bigg_random.safetensors")
    try:
        host_models.make_clip_vision_vit_bigg(path, seed=0)
        with recording_loads() as records:
            clip_vision = comfy.clip_vision.load(path)
        keys = file_keys(path)
    finally:  # pytest keeps the last few tmp_path folders: do not leave 3.7 GB behind
        if os.path.exists(path):
            os.remove(path)
    assert records == [("CLIPVisionModelProjection", [], [])]
    assert set(clip_vision.model.state_dict()) == keys
    out = clip_vision.encode_image(torch.rand(1, 224, 224, 3))
    assert out["image_embeds"].shape == (1, 1280)
    assert out["penultimate_hidden_states"].shape == (1, 257, 1664)
    for name in ("image_embeds", "penultimate_hidden_states"):
        assert_finite(out[name], name)
