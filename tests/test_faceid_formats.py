"""FaceID files at real size (meta tensors): the right variant from keys and shapes plus the explicit
faceid_variant, strict loading, and the refusals of mismatched variants and prompts."""
import pytest
import torch

from faceid_formats import FACEID_FILES, faceid_state_dict
from ipadapter_suite.ipadapter_core import (AdapterFileError, EncoderMismatchError, FacePrompt, ImagePrompt,
                                            IPAdapterModel, detect_spec)
from official_formats import SD15_WIDTHS, SDXL_WIDTHS, official_state_dict


@pytest.mark.parametrize("stem", sorted(FACEID_FILES))
def test_faceid_files_detect_and_load_strictly(stem):
    _, variant_input, kind, variant, tokens, family, has_lora = FACEID_FILES[stem]
    sd = faceid_state_dict(stem)
    spec = detect_spec(sd, variant_input)
    assert (spec.kind, spec.variant, spec.tokens, spec.family, spec.feature) == (kind, variant, tokens, family,
                                                                                "face")
    widths = SD15_WIDTHS if family == "sd15" else SDXL_WIDTHS
    assert [w for _, w in spec.layers] == widths
    assert spec.lora_layers == (tuple(range(2 * len(widths))) if has_lora else ())
    assert spec.lora_rank == (128 if has_lora else 0)
    model = IPAdapterModel.from_state_dict(sd, faceid_variant=variant_input)  # strict
    theirs = {f"{p}.{k}": tuple(v.shape) for p in sd for k, v in sd[p].items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == theirs


def test_plus_and_plus_v2_share_keys_and_auto_is_the_reference_default():
    sd = faceid_state_dict("ip-adapter-faceid-plusv2_sd15")
    assert detect_spec(sd).variant == "plus"  # shortcut=False, the reference's default call
    assert detect_spec(sd, "plus v2").variant == "plus v2"
    assert detect_spec(faceid_state_dict("ip-adapter-faceid-portrait_sd15"), "portrait unnorm").variant == \
        "portrait unnorm"


@pytest.mark.parametrize("stem,variant,match", [
    ("ip-adapter-faceid-plusv2_sd15", "portrait", "FaceID Plus / Plus v2 file.*'plus' or 'plus v2'"),
    ("ip-adapter-faceid_sd15", "plus v2", "a FaceID file.*'faceid'"),
    ("ip-adapter-faceid-portrait_sdxl", "plus", "Portrait file.*'portrait' or 'portrait unnorm'"),
])
def test_a_variant_the_contents_contradict_is_refused(stem, variant, match):
    with pytest.raises(AdapterFileError, match=match):
        detect_spec(faceid_state_dict(stem), variant)


def test_a_variant_on_a_clip_adapter_is_refused():
    with pytest.raises(AdapterFileError, match="for FaceID files; this is not one: set faceid_variant to 'auto'"):
        detect_spec(official_state_dict("ip-adapter-plus_sd15"), "plus v2")


def test_incomplete_lora_is_named():
    sd = faceid_state_dict("ip-adapter-faceid_sd15")
    del sd["ip_adapter"]["4.to_out_lora.up.weight"]
    with pytest.raises(AdapterFileError, match="layer 4's LoRA lacks to_out_lora.up"):
        detect_spec(sd)
    sd = faceid_state_dict("ip-adapter-faceid_sd15")
    for key in [k for k in sd["ip_adapter"] if k.startswith("30.") and "_lora." in k]:
        del sd["ip_adapter"][key]
    with pytest.raises(AdapterFileError, match="LoRA covers 31 attention layers; a complete one has 32"):
        detect_spec(sd)


def _face_prompt(n=1, hidden_width=None):
    hidden = None if hidden_width is None else torch.zeros(n, 257, hidden_width)
    return FacePrompt(torch.zeros(n, 512), torch.zeros(n, 512), hidden, hidden)


def test_mismatched_prompts_are_refused_naming_the_fix():
    faceid = detect_spec(faceid_state_dict("ip-adapter-faceid_sd15"))
    clip_prompt = ImagePrompt(torch.zeros(1, 1024), torch.zeros(1, 257, 1280), torch.zeros(1, 1024),
                              torch.zeros(1, 257, 1280))
    with pytest.raises(EncoderMismatchError, match="got a CLIP image prompt.*Encode Face Prompt"):
        clip_prompt.check_fits(faceid)
    clip_adapter = detect_spec(official_state_dict("ip-adapter-plus_sd15"))
    with pytest.raises(EncoderMismatchError, match="got a face prompt.*Encode Image Prompt"):
        _face_prompt().check_fits(clip_adapter)
    plus = detect_spec(faceid_state_dict("ip-adapter-faceid-plusv2_sd15"), "plus v2")
    with pytest.raises(EncoderMismatchError, match="connect Load CLIP Vision \\(OpenCLIP ViT-H/14\\)"):
        _face_prompt().check_fits(plus)
    with pytest.raises(EncoderMismatchError, match="hidden width 1280.*encode the faces again"):
        _face_prompt(1, 1664).check_fits(plus)
    _face_prompt(1, 1280).check_fits(plus)
