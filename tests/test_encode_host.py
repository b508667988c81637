"""EncodeImagePrompt's fit modes and chunked encoding, and the Save / Load Image Prompt nodes, in the real host."""
import pytest
import torch

from conftest import HOST, NO_HOST_REASON

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


@pytest.fixture(scope="module")
def clip_vision(host, tmp_path_factory):
    from host_models import tiny_clip_vision
    return tiny_clip_vision(tmp_path_factory.mktemp("clip"), seed=1)


def _images(n, h, w, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_chunked_encode_equals_one_image_at_a_time(ext, clip_vision):
    images = _images(7, 40, 40)
    encode = ext.host.vision.encode_image_prompt
    chunked = encode(clip_vision, images, batch_size=3)
    singles = [encode(clip_vision, images[i:i + 1], batch_size=1) for i in range(7)]
    torch.testing.assert_close(chunked.hidden, torch.cat([s.hidden for s in singles]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked.embeds, torch.cat([s.embeds for s in singles]), rtol=1e-5, atol=1e-5)
    assert chunked.count == 7


def test_fit_modes_feed_the_encoder_what_they_say(ext, clip_vision):
    wide = _images(1, 28, 84, seed=2)  # three 28x28 squares side by side
    encode = ext.host.vision.encode_image_prompt
    left, centre, right = (wide[:, :, i * 28:(i + 1) * 28] for i in range(3))
    for fit, square in (("top/left crop", left), ("center crop", centre), ("bottom/right crop", right)):
        got = encode(clip_vision, wide, fit=fit).hidden
        torch.testing.assert_close(got, encode(clip_vision, square).hidden, rtol=1e-5, atol=1e-5)
    squash = encode(clip_vision, wide, fit="squash").hidden
    pad = encode(clip_vision, wide, fit="pad").hidden
    assert not torch.allclose(squash, pad, atol=1e-3) and not torch.allclose(pad, encode(clip_vision, centre).hidden)
    grey = torch.tensor(clip_vision.image_mean).expand(1, 84, 84, 3).clone()
    grey[:, 28:56] = wide  # what "pad" should build: the image between two bands of the encoder's mean colour
    torch.testing.assert_close(pad, encode(clip_vision, grey).hidden, rtol=1e-5, atol=1e-5)


def test_save_and_load_image_prompt_nodes(ext, clip_vision, tmp_path):
    import folder_paths
    nodes = ext.nodes
    saved_output, saved_input = folder_paths.get_output_directory(), folder_paths.get_input_directory()
    folder_paths.set_output_directory(str(tmp_path / "output"))
    folder_paths.set_input_directory(str(tmp_path / "input"))
    try:
        prompt = ext.host.vision.encode_image_prompt(clip_vision, _images(2, 28, 28))
        result = nodes.SaveImagePrompt.execute(image_prompt=prompt, filename_prefix="faces").ui
        name = result["text"][0]
        assert name == "image_prompts/faces_00001_.safetensors [output]"
        again = nodes.SaveImagePrompt.execute(image_prompt=prompt, filename_prefix="faces").ui
        assert again["text"][0].startswith("image_prompts/faces_00002_")
        choices = nodes.LoadImagePrompt.INPUT_TYPES()["required"]["prompt_file"][1]["options"]
        assert name in choices
        (loaded,) = nodes.LoadImagePrompt.execute(prompt_file=name).args
        assert all(torch.equal(getattr(loaded, f), getattr(prompt, f))
                   for f in ("embeds", "hidden", "uncond_embeds", "uncond_hidden"))
        with pytest.raises(FileNotFoundError, match="Save Image Prompt"):
            nodes.LoadImagePrompt.execute(prompt_file="image_prompts/missing.safetensors")
    finally:
        folder_paths.set_output_directory(saved_output)
        folder_paths.set_input_directory(saved_input)


def test_noise_node_output_feeds_encode_as_negative(ext, clip_vision):
    image = _images(1, 28, 28, seed=5)
    (negative,) = ext.nodes.ImagePromptNoise.execute(kind="fade", strength=0.6, seed=3, image=image).args
    prompt = ext.host.vision.encode_image_prompt(clip_vision, image, negative)
    torch.testing.assert_close(prompt.uncond_hidden, ext.host.vision.encode_image_prompt(clip_vision, negative).hidden)
    assert not torch.allclose(prompt.uncond_hidden, prompt.hidden)


def test_interpolation_and_sharpening_prepare_what_the_encoder_sees(ext, clip_vision):
    """Another interpolation or sharpening: the encoder gets the image resized by that filter (PIL's, in the test)
    and sharpened, exactly as if it had been given that image at its own size; the default path is unchanged."""
    from test_incumbent_controls_core import _pil_resize
    from ipadapter_suite.ipadapter_core.image_ops import sharpen
    image = _images(1, 70, 70, seed=3)
    encode = ext.host.vision.encode_image_prompt
    size = clip_vision.image_size
    default = encode(clip_vision, image)
    assert torch.equal(encode(clip_vision, image, interpolation="bicubic", sharpening=0.0).hidden, default.hidden)
    for mode, pil in (("lanczos", "LANCZOS"), ("nearest", "NEAREST")):
        got = encode(clip_vision, image, interpolation=mode).hidden
        want = encode(clip_vision, _pil_resize(image, size, pil)).hidden  # already at the encoder's size
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-3)  # within one of the host's 8-bit levels
        assert not torch.allclose(got, default.hidden, atol=1e-3)
    sharp = encode(clip_vision, image, interpolation="lanczos", sharpening=0.8)
    want = encode(clip_vision, sharpen(_pil_resize(image, size, "LANCZOS"), 0.8))
    torch.testing.assert_close(sharp.hidden, want.hidden, rtol=1e-3, atol=2e-3)
    negative = encode(clip_vision, image, negative_image=image, sharpening=0.8)  # the negative is prepared the same
    torch.testing.assert_close(negative.uncond_hidden, negative.hidden)


def test_tiled_encode_gives_one_image_per_tile_with_its_region(ext, clip_vision):
    image = _images(1, 100, 200, seed=4)  # 1:2 -> 256 x 512 -> two tiles, left and right
    out = ext.host.vision.encode_tiled(clip_vision, image, tile_mode="tiles")
    assert out.prompt.count == 2 and out.tiles.shape == (2, 256, 256, 3) and out.masks.shape == (2, 256, 512)
    torch.testing.assert_close(out.prompt.regions, out.masks)
    assert out.masks[0, :, :256].min() == 1 and out.masks[0, :, 256:].max() == 0
    encode = ext.host.vision.encode_image_prompt
    for i in range(2):  # each tile's features are those of that tile encoded alone
        torch.testing.assert_close(out.prompt.hidden[i:i + 1], encode(clip_vision, out.tiles[i:i + 1]).hidden)
    default = encode(clip_vision, image[:, :, :100])
    torch.testing.assert_close(out.prompt.uncond_hidden[:1], default.uncond_hidden)  # the default negative


def test_enhancer_blends_the_tiles_patch_tokens_by_ratio(ext, clip_vision):
    """The tiny encoder has a 2 x 2 patch grid: with 2 x 2 tiles, patch cell (i, j) of the merged tokens is the
    mean of the patch tokens of quadrant (i, j) encoded alone; the class token the quadrants' mean."""
    image = _images(1, 56, 56, seed=5)
    encode = ext.host.vision.encode_image_prompt
    out = ext.host.vision.encode_tiled(clip_vision, image, tile_mode="enhancer", enhance_ratio=0.3,
                                       enhance_tiles=2)
    full = encode(clip_vision, image)
    quadrants = [encode(clip_vision, image[:, i * 28:(i + 1) * 28, j * 28:(j + 1) * 28]) for i in (0, 1)
                 for j in (0, 1)]
    cells = torch.stack([q.hidden[0, 1:].mean(0) for q in quadrants])
    merged = torch.cat([torch.stack([q.hidden[0, 0] for q in quadrants]).mean(0, keepdim=True), cells])
    torch.testing.assert_close(out.prompt.hidden, 0.3 * full.hidden + 0.7 * merged[None], rtol=1e-5, atol=1e-5)
    embeds = torch.stack([q.embeds[0] for q in quadrants]).mean(0)
    torch.testing.assert_close(out.prompt.embeds, 0.3 * full.embeds + 0.7 * embeds[None], rtol=1e-5, atol=1e-5)
    plain = ext.host.vision.encode_tiled(clip_vision, image, tile_mode="enhancer", enhance_ratio=1.0)
    torch.testing.assert_close(plain.prompt.hidden, full.hidden)  # ratio 1: the full image only
