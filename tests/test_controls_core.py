"""Issue-5 controls in the pure-torch core: presets as data, curves, combining, files, pixel helpers."""
import math

import pytest
import torch

from ipadapter_suite.ipadapter_core import (IPAdapterError, LAYOUTS, AdapterFileError, EncoderMismatchError,
                                            ImagePrompt, combine_prompts, curve_values, layer_weights,
                                            load_image_prompt, noise_image, save_image_prompt, square_images)
from ipadapter_suite.ipadapter_core.presets import LAYER_PRESETS, forward_order


def _prompt(n, seed, width=8, patches=5):
    g = torch.Generator().manual_seed(seed)
    return ImagePrompt(torch.randn(n, width, generator=g), torch.randn(n, patches, width * 2, generator=g),
                       torch.randn(n, width, generator=g), torch.randn(n, patches, width * 2, generator=g))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_forward_order_runs_input_then_middle_then_output(family):
    order = [s.key for s in forward_order(family)]
    names = [k[0] for k in order]
    assert names == sorted(names, key=["input", "middle", "output"].index)
    assert sorted(order) == sorted(s.key for s in LAYOUTS[family])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_depth_presets(family):
    order = [s.n for s in forward_order(family)]
    assert layer_weights(family, "linear", 0.7) == {n: 0.7 for n in order}
    ease_in = [layer_weights(family, "ease in", 1.0)[n] for n in order]
    ease_out = [layer_weights(family, "ease out", 1.0)[n] for n in order]
    assert ease_in == sorted(ease_in) and ease_in[0] == pytest.approx(0.05) and ease_in[-1] == pytest.approx(1.0)
    assert ease_out == sorted(ease_out, reverse=True) and ease_out[0] == pytest.approx(1.0)
    in_out = [layer_weights(family, "ease in-out", 2.0)[n] for n in order]
    middle = max(range(len(order)), key=lambda i: in_out[i])
    assert abs(middle - (len(order) - 1) / 2) <= 1 and in_out[0] == pytest.approx(0.1)


def test_style_and_composition_weights_and_sd15_quarter():
    sdxl = layer_weights("sdxl", "style and composition", 1.2, composition_weight=0.4)
    assert {n: w for n, w in sdxl.items() if w == 1.2} == {n: 1.2 for n in range(69, 88, 2)}
    assert {n: w for n, w in sdxl.items() if w == 0.4} == {n: 0.4 for n in range(29, 48, 2)}
    assert len(sdxl) == 20
    sd15 = layer_weights("sd15", "composition", 2.0)
    assert sd15 == {9: 0.5, 11: 2.0}  # input 7 (N 9) at a quarter, input 8 (N 11)


def test_custom_layer_weights_forms_and_errors():
    assert layer_weights("sd15", "custom", 2.0, custom="31=0.5, input 1=1") == {1: 2.0, 31: 1.0}
    listed = ",".join(str(i) for i in range(16))
    assert layer_weights("sd15", "custom", 1.0, custom=listed) == {2 * i + 1: float(i) for i in range(1, 16)}
    with pytest.raises(IPAdapterError, match="16 layers"):
        layer_weights("sd15", "custom", 1.0, custom="1, 2, 3")
    with pytest.raises(IPAdapterError, match="not a number"):
        layer_weights("sdxl", "custom", 1.0, custom="middle=x")
    with pytest.raises(IPAdapterError, match="empty"):
        layer_weights("sdxl", "custom", 1.0, custom=" ")
    with pytest.raises(IPAdapterError, match="choose one of"):
        layer_weights("sdxl", "strongest", 1.0)
    assert "custom" in LAYER_PRESETS


def test_curve_values():
    assert curve_values("constant", 5) == [1.0] * 5
    assert curve_values("ramp down", 5) == [1.0, 0.75, 0.5, 0.25, 0.0]
    smooth = curve_values("smooth up", 11)
    assert smooth[5] == pytest.approx(0.5) and smooth[2] == pytest.approx(3 * 0.04 - 2 * 0.008)
    with pytest.raises(IPAdapterError):
        curve_values("wobble", 3)


def test_combine_concat_average_weighted():
    a, b = _prompt(2, 1), _prompt(1, 2)
    cat = combine_prompts([a, b], "concat")
    assert torch.equal(cat.hidden, torch.cat([a.hidden, b.hidden])) and cat.count == 3
    avg = combine_prompts([a, b], "average")
    stacked = torch.cat([a.embeds, b.embeds])
    torch.testing.assert_close(avg.embeds, ((stacked[0] + stacked[1] + stacked[2]) / 3)[None])
    weighted = combine_prompts([a, b], "weighted average", ["1", "0", "3"])
    want = (a.uncond_hidden[0] + 3 * b.uncond_hidden[0]) / 4
    torch.testing.assert_close(weighted.uncond_hidden, want[None])
    with pytest.raises(ValueError, match="one weight per reference image"):
        combine_prompts([a, b], "weighted average", ["1"])
    with pytest.raises(ValueError, match="sum to 0"):
        combine_prompts([a], "weighted average", ["1", "-1"])
    with pytest.raises(EncoderMismatchError, match="different CLIP vision"):
        combine_prompts([a, _prompt(1, 3, width=6)], "concat")


def test_prompt_file_round_trip_and_bad_files(tmp_path):
    prompt = _prompt(3, 4)
    prompt = ImagePrompt(prompt.embeds.half(), prompt.hidden, prompt.uncond_embeds,
                         prompt.uncond_hidden[:1].expand(3, -1, -1))  # a view, as the encoder glue makes
    save_image_prompt(tmp_path / "p.safetensors", prompt)
    loaded = load_image_prompt(tmp_path / "p.safetensors")
    for name in ("embeds", "hidden", "uncond_embeds", "uncond_hidden"):
        got, want = getattr(loaded, name), getattr(prompt, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    data = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="truncated or corrupt"):
        load_image_prompt(tmp_path / "cut.safetensors")
    import safetensors.torch
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AdapterFileError, match="not a saved image prompt"):
        load_image_prompt(tmp_path / "other.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.safetensors", "other.safetensors", "p.safetensors"]


def test_square_images_crop_pad_squash():
    wide = torch.arange(2 * 4 * 10 * 3, dtype=torch.float32).reshape(2, 4, 10, 3)
    assert torch.equal(square_images(wide, "center crop"), wide[:, :, 3:7])
    assert torch.equal(square_images(wide, "top/left crop"), wide[:, :, :4])
    assert torch.equal(square_images(wide, "bottom/right crop"), wide[:, :, 6:])
    assert square_images(wide, "squash") is wide
    tall = wide.transpose(1, 2)  # (2, 10, 4, 3)
    assert torch.equal(square_images(tall, "bottom/right crop"), tall[:, 6:])
    padded = square_images(tall, "pad", fill=(0.1, 0.2, 0.3))
    assert padded.shape == (2, 10, 10, 3)
    assert torch.equal(padded[:, :, 3:7], tall)
    assert torch.equal(padded[0, 0, 0], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(padded[1, 9, 9], torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="choose one of"):
        square_images(wide, "stretch")


def test_noise_images():
    image = torch.rand(2, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    for kind in ("fade", "dissolve", "gaussian", "shuffle"):
        out = noise_image(kind, 0.5, seed=3, image=image)
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, noise_image(kind, 0.5, seed=3, image=image))  # same seed, same image
        assert not torch.equal(out, noise_image(kind, 0.5, seed=4, image=image))
        assert torch.equal(noise_image(kind, 0.0, seed=3, image=image), image)  # strength 0: the reference
    dissolved = noise_image("dissolve", 0.3, seed=1, image=image)
    changed = (dissolved != image).any(-1).float().mean().item()
    assert abs(changed - 0.3) < 0.03
    shuffled = noise_image("shuffle", 1.0, seed=1, image=image)
    for c in range(3):  # pixels moved, values kept
        assert torch.equal(shuffled[..., c].flatten(1).sort(1).values, image[..., c].flatten(1).sort(1).values)
    grey = noise_image("gaussian", 1.0, seed=0)
    assert grey.shape == (1, 224, 224, 3) and math.isclose(grey.mean().item(), 0.5, abs_tol=0.02)
