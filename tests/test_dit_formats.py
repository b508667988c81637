"""DiT IP-Adapter formats at real size (meta tensors): detection, strict loading, file I/O and bad files."""
import pytest
import safetensors.torch
import torch

from dit_formats import FLUX_HIDDEN, T5_WIDTH, VIT_L_EMBEDS, instantx_flux, instantx_sd35, xlabs_flux
from ipadapter_suite.ipadapter_core import (AdapterFileError, EncoderMismatchError, ImagePrompt,
                                            UnsupportedAdapterError, detect_spec)
from ipadapter_suite.ipadapter_core.dit import build_dit_adapter, detect_dit_spec, dit_block_weights, is_dit_layout
from ipadapter_suite.ipadapter_core.errors import InputError
from ipadapter_suite.ipadapter_core.weights import is_dit_adapter_file, load_dit_adapter_file


@pytest.mark.parametrize("tokens", [4, 16])
def test_xlabs_flux_detects_and_loads_strictly(tokens):
    sd = xlabs_flux(tokens)
    spec = detect_dit_spec(sd)
    assert (spec.kind, spec.family, spec.feature, spec.tokens) == ("xlabs_flux", "flux", "pooled", tokens)
    assert (spec.encoder_width, spec.cross_attention_dim, spec.hidden) == (VIT_L_EMBEDS, T5_WIDTH, FLUX_HIDDEN)
    assert spec.block_keys == tuple(("double_block", i) for i in range(19))
    assert spec.encoder == "CLIP ViT-L/14"
    model = build_dit_adapter(sd)  # strict: any missing/unexpected key or shape raises
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}
    blocks = sum(p.numel() for p in model.double_blocks.parameters())
    assert blocks == 19 * 2 * (FLUX_HIDDEN * T5_WIDTH + FLUX_HIDDEN)
    assert sum(p.numel() for p in model.ip_adapter_proj_model.parameters()) == (
        tokens * T5_WIDTH * (VIT_L_EMBEDS + 1) + 2 * T5_WIDTH)


@pytest.mark.parametrize("edit,message", [
    (lambda sd: [sd.pop(f"double_blocks.18.processor.ip_adapter_double_stream_{kv}_proj.{end}")
                 for kv in "kv" for end in ("weight", "bias")], "18 double blocks.*incomplete"),
    (lambda sd: sd.pop("double_blocks.3.processor.ip_adapter_double_stream_v_proj.bias"),
     "double block 3 lacks v.bias"),
    (lambda sd: sd.update({"double_blocks.2.processor.ip_adapter_double_stream_k_proj.weight":
                           torch.empty(FLUX_HIDDEN, 1024, device="meta")}), "double block 2.*do not fit"),
    (lambda sd: sd.update({"single_blocks.0.processor.x.weight": torch.empty(3, device="meta")}),
     "unexpected key 'single_blocks.0"),
    (lambda sd: sd.pop("ip_adapter_proj_model.norm.bias"), "needs ip_adapter_proj_model.norm.bias"),
    (lambda sd: sd.update({"ip_adapter_proj_model.norm.bias": torch.zeros(T5_WIDTH, dtype=torch.int32)}),
     "dtype torch.int32"),
])
def test_bad_xlabs_files_are_named(edit, message):
    sd = xlabs_flux(4)
    edit(sd)
    with pytest.raises(AdapterFileError, match=message):
        detect_dit_spec(sd)


def test_wrong_encoder_is_named():
    spec = detect_dit_spec(xlabs_flux(4))
    vit_h = ImagePrompt(torch.zeros(1, 1024), torch.zeros(1, 257, 1280), torch.zeros(1, 1024),
                        torch.zeros(1, 257, 1280))
    with pytest.raises(EncoderMismatchError, match="Load CLIP ViT-L/14 in Load CLIP Vision"):
        vit_h.check_fits(spec)


def test_files_are_told_apart_by_their_keys_and_values_are_checked(tmp_path):
    g = torch.Generator().manual_seed(0)
    small = {k: torch.randn(tuple(s // 128 or 1 for s in v.shape), generator=g) for k, v in xlabs_flux(4).items()}
    path = tmp_path / "renamed-anything.safetensors"
    safetensors.torch.save_file(small, str(path))
    assert is_dit_adapter_file(path)
    model = load_dit_adapter_file(path)
    assert torch.equal(model.state_dict()["double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"],
                       small["double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"])
    h94 = tmp_path / "h94.safetensors"
    safetensors.torch.save_file({"image_proj.proj.weight": torch.zeros(2, 2)}, str(h94))
    assert not is_dit_adapter_file(h94)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 10)
    assert not is_dit_adapter_file(tmp_path / "broken.safetensors")  # left to the h94 loader to report
    small["double_blocks.4.processor.ip_adapter_double_stream_v_proj.bias"][1] = float("nan")
    safetensors.torch.save_file(small, str(path))
    with pytest.raises(AdapterFileError, match="renamed-anything.*double_blocks.4.processor.ip_adapter_double_"
                                               "stream_v_proj.bias"):
        load_dit_adapter_file(path)


def test_block_weights_linear_custom_and_refused_presets():
    spec = detect_dit_spec(xlabs_flux(4))
    assert dit_block_weights(spec, "linear", 0.5) == {("double_block", i): 0.5 for i in range(19)}
    assert dit_block_weights(spec, "linear", 0.0) == {}
    listed = dit_block_weights(spec, "custom", 2.0, ", ".join(["0"] * 18 + ["0.25"]))
    assert listed == {("double_block", 18): 0.5}
    named = dit_block_weights(spec, "custom", 1.0, "double 0=1.0\ndouble 7=0.5")
    assert named == {("double_block", 0): 1.0, ("double_block", 7): 0.5}
    with pytest.raises(InputError, match="3 numbers for 19 blocks"):
        dit_block_weights(spec, "custom", 1.0, "1, 2, 3")
    with pytest.raises(InputError, match="'single 0' is not a block"):
        dit_block_weights(spec, "custom", 1.0, "single 0=1")
    with pytest.raises(InputError, match="'style transfer' is a preset of SD1.5/SDXL.*linear or custom"):
        dit_block_weights(spec, "style transfer", 1.0)


def _flat(nested):
    return {f"{part}.{key}": value for part, values in nested.items() for key, value in values.items()}


def test_instantx_flux_in_the_h94_reader_is_named_not_taken_for_faceid():
    with pytest.raises(UnsupportedAdapterError, match="InstantX FLUX.1-dev IP-Adapter, a Flux adapter: load it "
                                                      "with Load IP-Adapter"):
        detect_spec(instantx_flux())


def test_instantx_flux_detects_and_loads_strictly():
    flat = _flat(instantx_flux())
    assert is_dit_layout(flat)
    spec = detect_dit_spec(flat)
    assert (spec.kind, spec.family, spec.feature, spec.tokens) == ("instantx_flux", "flux", "pooled", 128)
    assert (spec.encoder_width, spec.cross_attention_dim, spec.hidden, spec.proj_hidden) == (
        1152, T5_WIDTH, FLUX_HIDDEN, 2304)
    assert spec.block_keys == (tuple(("double_block", i) for i in range(19))
                               + tuple(("single_block", i) for i in range(38)))
    assert spec.encoder == "SigLIP so400m-384 (with its pooling head)"
    assert spec.describe.startswith("InstantX FLUX.1-dev IP-Adapter (128 tokens)")
    model = build_dit_adapter(flat)  # strict
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in flat.items()}
    assert sum(p.numel() for p in model.ip_adapter.parameters()) == 57 * 2 * FLUX_HIDDEN * T5_WIDTH


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("ip_adapter.40.to_v_ip.weight"), r"K'/V' for 57 blocks \(incomplete or missing: \[40\]"),
    (lambda sd: (sd.pop("ip_adapter.56.to_k_ip.weight"), sd.pop("ip_adapter.56.to_v_ip.weight")),
     r"K'/V' for 56 blocks \(incomplete or missing: \[56\]"),
    (lambda sd: sd.update({"ip_adapter.3.to_k_ip.weight": torch.empty(FLUX_HIDDEN, 768, device="meta")}),
     r"ip_adapter.3.to_k_ip.weight is \[3072, 768\], not \[3072, 4096\]"),
    (lambda sd: sd.pop("image_proj.norm.bias"), "image_proj.*lacks norm.bias"),
    (lambda sd: sd.update({"image_proj.proj.2.bias": torch.empty(7, device="meta")}),
     "image_proj.proj.2.bias does not fit an MLP from 1152"),
    (lambda sd: sd.update({"ip_adapter.3.to_k_ip.bias": torch.empty(FLUX_HIDDEN, device="meta")}),
     "unexpected key 'ip_adapter.3.to_k_ip.bias'"),
])
def test_bad_instantx_flux_files_are_named(edit, message):
    flat = _flat(instantx_flux())
    edit(flat)
    with pytest.raises(AdapterFileError, match=message):
        detect_dit_spec(flat)


def test_instantx_flux_block_weights_name_double_and_single_blocks():
    spec = detect_dit_spec(_flat(instantx_flux()))
    assert len(dit_block_weights(spec, "linear", 1.0)) == 57
    assert dit_block_weights(spec, "custom", 1.0, "single 0=0.5, double 18=2") == {
        ("single_block", 0): 0.5, ("double_block", 18): 2.0}
    with pytest.raises(InputError, match="3 numbers for 57 blocks"):
        dit_block_weights(spec, "custom", 1.0, "1, 2, 3")
    with pytest.raises(InputError, match="'single 38' is not a block.*'single 0' ... 'single 37'"):
        dit_block_weights(spec, "custom", 1.0, "single 38=1")


def test_a_prompt_without_the_pooled_siglip_embedding_is_refused():
    spec = detect_dit_spec(_flat(instantx_flux()))
    tokens = torch.zeros(1, 729, 1152)  # the host's SigLIP image_embeds: token states, no pooling head
    prompt = ImagePrompt(tokens, tokens, torch.zeros_like(tokens), tokens)
    with pytest.raises(EncoderMismatchError,
                       match="729 token states: the loaded SigLIP has no pooling head.*siglip-so400m-patch14-384"):
        prompt.check_fits(spec)
    pooled = ImagePrompt(torch.zeros(1, 1152), tokens, torch.zeros(1, 1152), tokens)
    pooled.check_fits(spec)


def test_instantx_sd35_detects_and_loads_strictly():
    flat = _flat(instantx_sd35())
    spec = detect_dit_spec(flat)
    assert (spec.kind, spec.family, spec.feature, spec.tokens, spec.encoder) == (
        "instantx_sd35", "sd35", "hidden", 64, "SigLIP so400m-384")
    assert (spec.encoder_width, spec.cross_attention_dim, spec.hidden) == (1152, 2432, 2432)
    assert (spec.resampler_dim, spec.resampler_depth, spec.resampler_heads, spec.time_dim) == (1280, 4, 20, 320)
    assert spec.block_keys == tuple(("double_block", i) for i in range(38))
    model = build_dit_adapter(flat)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in flat.items()}


def test_incomplete_sd35_file_is_named():
    flat = _flat(instantx_sd35())
    del flat["ip_adapter.12.norm_ip_k.weight"]
    with pytest.raises(AdapterFileError, match=r"incomplete: \[12\]"):
        detect_dit_spec(flat)


def test_instantx_flux_tokens_in_row_blocks_equal_the_whole_projection(monkeypatch):
    """The projection's last Linear applied a block of rows at a time (bounded casts) gives the module's own
    forward: Linear, GELU, Linear, LayerNorm per token."""
    import ipadapter_suite.ipadapter_core.instantx_flux as dit
    g = torch.Generator().manual_seed(0)
    flat = {"image_proj.proj.0.weight": torch.randn(16, 8, generator=g), "image_proj.proj.0.bias": torch.randn(16),
            "image_proj.proj.2.weight": torch.randn(5 * 12, 16, generator=g), "image_proj.proj.2.bias": torch.randn(60),
            "image_proj.norm.weight": torch.rand(12) + 0.5, "image_proj.norm.bias": torch.randn(12)}
    flat.update({f"ip_adapter.{n}.to_{kv}_ip.weight": torch.randn(24, 12, generator=g)
                 for n in range(57) for kv in "kv"})
    model = build_dit_adapter(flat)
    features = torch.randn(3, 8, generator=g)
    monkeypatch.setattr(dit, "PROJ_ROWS", 7)  # 60 rows in 9 blocks, the last one short
    tokens = model.image_tokens(features)
    assert tokens.shape == (3, 5, 12)
    assert torch.allclose(tokens, model.image_proj(features), rtol=1e-5, atol=1e-6)
