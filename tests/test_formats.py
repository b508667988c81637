"""Official weight formats at real size: detection, strict loading, file I/O and the errors for bad files."""
import pickle

import pytest
import safetensors
import safetensors.torch
import torch

from ipadapter_suite.ipadapter_core import (AdapterFileError, AdapterSpec, EncoderMismatchError, ImagePrompt,
                                            IPAdapterModel, detect_spec, load_adapter_file, save_adapter_file)
from official_formats import OFFICIAL, SD15_WIDTHS, base_proj, ip_layers, official_state_dict


@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_official_files_detect_and_load_strictly(stem):
    _, widths, cross_dim, kind, tokens, family, encoder = OFFICIAL[stem]
    sd = official_state_dict(stem)
    spec = detect_spec(sd)
    assert (spec.kind, spec.tokens, spec.family, spec.cross_attention_dim) == (kind, tokens, family, cross_dim)
    assert encoder in spec.encoder
    assert [w for _, w in spec.layers] == widths
    model = IPAdapterModel.from_state_dict(sd)  # strict: any missing/unexpected key or shape raises
    theirs = {f"{p}.{k}": tuple(v.shape) for p in sd for k, v in sd[p].items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == theirs


def test_parameter_counts_match_the_paper():
    sd15 = IPAdapterModel.from_state_dict(official_state_dict("ip-adapter_sd15"))
    assert sum(p.numel() for p in sd15.image_proj.parameters()) == 3_150_336
    assert sum(p.numel() for p in sd15.ip_adapter.parameters()) == 19_169_280
    sdxl = IPAdapterModel.from_state_dict(official_state_dict("ip-adapter_sdxl"))
    assert sum(p.numel() for p in sdxl.ip_adapter.parameters()) == 340_787_200


def test_missing_layer_and_partial_layer_are_named():
    sd = official_state_dict("ip-adapter_sd15")
    del sd["ip_adapter"]["31.to_v_ip.weight"]
    with pytest.raises(AdapterFileError, match="layer 31 has only to_k_ip"):
        detect_spec(sd)
    sd = official_state_dict("ip-adapter_sd15")
    for key in ("31.to_k_ip.weight", "31.to_v_ip.weight"):
        del sd["ip_adapter"][key]
    with pytest.raises(AdapterFileError, match="15 cross-attention layers"):
        detect_spec(sd)


def test_wrong_encoder_features_name_the_encoder():
    spec = detect_spec(official_state_dict("ip-adapter_sd15"))  # needs ViT-H pooled 1024
    big_g = ImagePrompt(torch.zeros(1, 1280), torch.zeros(1, 257, 1664), torch.zeros(1, 1280),
                        torch.zeros(1, 257, 1664))
    with pytest.raises(EncoderMismatchError, match="Load OpenCLIP ViT-H/14 in Load CLIP Vision"):
        big_g.check_fits(spec)
    plus = detect_spec(official_state_dict("ip-adapter-plus_sdxl_vit-h"))  # hidden 1280
    with pytest.raises(EncoderMismatchError, match="hidden image features of width 1280"):
        big_g.check_fits(plus)


def _real_sd15(device="cpu"):
    return {"image_proj": base_proj(1024, 768, device=device), "ip_adapter": ip_layers(SD15_WIDTHS, 768, device)}


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_real_size_round_trip(tmp_path, suffix):
    sd = _real_sd15()
    path = tmp_path / f"adapter{suffix}"
    save_adapter_file(path, sd)
    loaded, spec = load_adapter_file(path)
    assert spec.kind == "base" and spec.family == "sd15"
    for part in sd:
        assert loaded[part].keys() == sd[part].keys()
        for key in sd[part]:
            assert torch.equal(loaded[part][key], sd[part][key])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_official_safetensors_layout_has_only_prefixed_keys(tmp_path):
    path = tmp_path / "a.safetensors"
    save_adapter_file(path, _real_sd15())
    keys = safetensors.torch.load_file(str(path)).keys()
    with safetensors.safe_open(str(path), framework="pt") as f:
        written = AdapterSpec.from_json(f.metadata()["ipadapter_spec"])
    assert written == detect_spec(_real_sd15())  # the spec travels inside the file
    assert {k.split(".", 1)[0] for k in keys} == {"image_proj", "ip_adapter"}
    assert "ip_adapter.1.to_k_ip.weight" in keys and "image_proj.proj.weight" in keys


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_adapter_file(path, _real_sd15())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="truncated or corrupt"):
        load_adapter_file(path)


def test_truncated_bin(tmp_path):
    path = tmp_path / "cut.bin"
    save_adapter_file(path, _real_sd15())
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(AdapterFileError, match="truncated, corrupt"):
        load_adapter_file(path)


def test_safetensors_that_is_not_an_adapter(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.out.0.weight": torch.zeros(4)}, str(path))
    with pytest.raises(AdapterFileError, match="not an IP-Adapter file"):
        load_adapter_file(path)


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_bin_never_executes_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"image_proj": _Payload(), "ip_adapter": {}}, f)
    with pytest.raises(AdapterFileError, match="holds code instead of tensors"):
        load_adapter_file(path)
    assert not (tmp_path / "pwned").exists()
