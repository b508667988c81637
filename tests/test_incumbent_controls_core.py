"""The controls of ComfyUI_IPAdapter_plus in the pure-torch core, each against an independent computation written
out here from how that extension computes them: its 15 weight types (by its layer index t, mapped to our blocks by a
table written out below), the "precise" swap, embeds_scaling and the combine methods."""
import math

import pytest
import torch

from ipadapter_suite.ipadapter_core import (INCUMBENT_WEIGHT_TYPES, LAYER_PRESETS, LAYOUTS, Branch, ImagePrompt,
                                            IPAttentionPatch, combine_prompts, layer_weights, scale_keys_values,
                                            swapped_layers)
from test_core_math import reference_attention

# The incumbent's layer index t (the host's transformer_index: one per block holding cross-attention, counted in the
# order the UNet runs) -> our host block. Written out from the host's UNet layout, not from ipadapter_core.
RUN_BLOCKS = {
    "sd15": [("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0),
             *(("output", i) for i in range(3, 12))],
    "sdxl": [("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0),
             *(("output", i) for i in range(6))],
}


def incumbent_weights(family, weight_type, w, wc=1.0):
    """{t: weight} as the incumbent's ipadapter_execute / ipadapter_attention compute it (t = its layer index)."""
    sdxl = family == "sdxl"
    layers = 11 if sdxl else 16
    ts = range(layers)
    curves = {"ease in": lambda t: 0.05 + 0.95 * (1 - t / layers), "ease out": lambda t: 0.05 + 0.95 * (t / layers),
              "ease in-out": lambda t: 0.05 + 0.95 * (1 - abs(t - layers / 2) / (layers / 2)),
              "reverse in-out": lambda t: 0.05 + 0.95 * (abs(t - layers / 2) / (layers / 2))}
    if weight_type in curves:
        return {t: w * curves[weight_type](t) for t in ts}
    kind = {t: RUN_BLOCKS[family][t][0] for t in ts}
    weak = {"weak input": ("input",), "weak middle": ("middle",), "weak output": ("output",),
            "strong middle": ("input", "output")}
    if weight_type in weak:
        return {t: w * 0.2 if kind[t] in weak[weight_type] else w for t in ts}
    if weight_type == "linear":
        return {t: w for t in ts}
    style = [0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15]
    tables = {
        "style transfer": ({6: w}, {t: w for t in style}),
        "composition": ({3: w}, {4: w * 0.25, 5: w}),
        "strong style transfer": ({t: w for t in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)},
                                  {t: w for t in (0, 1, 2, 3, *range(6, 16))}),
        "style and composition": ({3: wc, 6: w}, {**{t: w for t in style}, 4: wc * 0.25, 5: wc}),
        "strong style and composition": ({**{t: w for t in range(11)}, 3: wc},
                                         {**{t: w for t in range(16)}, 4: wc, 5: wc}),
        "style transfer precise": ({3: w, 6: w}, {**{t: w for t in style}, 4: w * 0.25, 5: w}),
        "composition precise": ({**{t: w * .1 for t in range(11)}, 3: w, 6: w},
                                {**{t: w for t in range(16)}, 4: w * 0.25, 6: w * .1, 7: w * .1, 8: w * .1}),
    }
    return tables[weight_type][0 if sdxl else 1]


def by_layer(family, per_t):
    """{t: weight} -> {N: weight}: every transformer of the block at index t gets its weight."""
    block_of = {block: t for t, block in enumerate(RUN_BLOCKS[family])}
    return {s.n: per_t[block_of[s.key[:2]]] for s in LAYOUTS[family] if block_of[s.key[:2]] in per_t}


def test_existing_presets_keep_their_names_and_place():
    assert LAYER_PRESETS[:8] == ("linear", "ease in", "ease out", "ease in-out", "style transfer", "composition",
                                 "style and composition", "custom")
    assert set(INCUMBENT_WEIGHT_TYPES) == {
        "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
        "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
        "style and composition", "style transfer precise", "composition precise"}
    assert set(INCUMBENT_WEIGHT_TYPES.values()) <= set(LAYER_PRESETS)
    for name in ("ease in", "ease out", "ease in-out"):  # ours are other curves: the incumbent's has its own name
        assert INCUMBENT_WEIGHT_TYPES[name] == f"{name} (incumbent)"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight_type", sorted(INCUMBENT_WEIGHT_TYPES) + ["strong style and composition"])
def test_incumbent_weight_types_by_block(family, weight_type, weight=0.8, wc=0.6):
    preset = INCUMBENT_WEIGHT_TYPES.get(weight_type, weight_type)
    got = layer_weights(family, preset, weight, composition_weight=wc)
    want = by_layer(family, incumbent_weights(family, weight_type, weight, wc))
    assert got.keys() == want.keys()
    for n in want:
        assert got[n] == pytest.approx(want[n], rel=1e-12), (n, weight_type)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_precise_presets_swap_exactly_the_incumbents_layers(family):
    """The incumbent swaps on t = 3 (SDXL) / t = 4, 5 (SD1.5) for style transfer precise, elsewhere for composition
    precise; every other preset swaps nowhere."""
    swap_t = {3} if family == "sdxl" else {4, 5}
    everything = set(range(len(RUN_BLOCKS[family])))
    style = set(by_layer(family, {t: 1 for t in swap_t}))
    composition = set(by_layer(family, {t: 1 for t in everything - swap_t}))
    assert swapped_layers(family, "style transfer precise") == style
    assert swapped_layers(family, "composition precise") == composition
    for preset in LAYER_PRESETS:
        if "precise" not in preset:
            assert swapped_layers(family, preset) == frozenset()


# ------------------------------------------------------------------------------------------------ embeds_scaling

def _scaled_reference(mode, q, k, v, w, heads):
    """The image branch of each mode written out: V only w·Attn(Q, K, V); K+V Attn(Q, wK, wV); C penalty
    w' = w·C/1280; K+mean(V): Attn(Q, w'K, (V - mean_N V) + w'·mean_N V)."""
    c = k.shape[-1]
    if mode == "V only":
        return w * reference_attention(q, k, v, heads)
    if mode == "K+V":
        return reference_attention(q, w * k, w * v, heads)
    wp = w * c / 1280.0
    if mode == "K+V w/ C penalty":
        return reference_attention(q, wp * k, wp * v, heads)
    mean = v.sum(1, keepdim=True) / v.shape[1]
    return reference_attention(q, wp * k, (v - mean) + wp * mean, heads)


@pytest.mark.parametrize("mode", ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"])
def test_embeds_scaling_in_the_patch_matches_the_formula(mode):
    g = torch.Generator().manual_seed(5)
    heads, inner, weight = 4, 640, 0.7
    q, k, v = (torch.randn(4, n, inner, generator=g) for n in (10, 7, 7))
    kv = [torch.randn(1, 4, inner, generator=g) for _ in range(4)]
    branch = Branch(*kv, weight=weight, scaling=mode)
    extra = {"n_heads": heads, "cond_or_uncond": [0, 1]}
    out = IPAttentionPatch((branch,))(q, k, v, extra)
    want = reference_attention(q, k, v, heads)
    want[:2] += _scaled_reference(mode, q[:2], kv[0].expand(2, -1, -1), kv[1].expand(2, -1, -1), weight, heads)
    want[2:] += _scaled_reference(mode, q[2:], kv[2].expand(2, -1, -1), kv[3].expand(2, -1, -1), weight, heads)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    gated = Branch(*kv, weight=weight, scaling=mode, sigma_range=(10.0, 1.0))  # outside the range: nothing
    plain = IPAttentionPatch(())(q, k, v, extra)
    assert torch.equal(IPAttentionPatch((gated,))(q, k, v, {**extra, "sigmas": torch.tensor([0.5])}), plain)


def test_scale_keys_values_refuses_an_unknown_mode_and_v_only_is_untouched():
    k, v = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    assert scale_keys_values("V only", k, v, 0.3) == (k, v)
    with pytest.raises(ValueError, match="choose one of"):
        scale_keys_values("K only", k, v, 0.3)


def test_precise_swap_gives_cond_rows_nothing_and_uncond_rows_the_cond_tokens():
    from ipadapter_suite.ipadapter_core.attention import _swap
    g = torch.Generator().manual_seed(6)
    heads, inner = 2, 16
    q, k, v = (torch.randn(4, n, inner, generator=g) for n in (6, 5, 5))
    kv = [torch.randn(1, 3, inner, generator=g) for _ in range(4)]
    extra = {"n_heads": heads, "cond_or_uncond": [0, 1]}
    out = IPAttentionPatch((_swap(Branch(*kv, weight=0.9)),))(q, k, v, extra)
    plain = reference_attention(q, k, v, heads)
    torch.testing.assert_close(out[:2], plain[:2], rtol=1e-5, atol=1e-6)  # zero keys and values: exactly 0 added
    want = plain[2:] + 0.9 * reference_attention(q[2:], kv[0].expand(2, -1, -1), kv[1].expand(2, -1, -1), heads)
    torch.testing.assert_close(out[2:], want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ combine

def _prompt(n, seed):
    g = torch.Generator().manual_seed(seed)
    return ImagePrompt(torch.randn(n, 6, generator=g), torch.randn(n, 3, 10, generator=g),
                       torch.randn(n, 6, generator=g), torch.randn(n, 3, 10, generator=g))


@pytest.mark.parametrize("method", ["add", "subtract", "norm average", "max", "min"])
def test_combine_methods_by_their_formula(method):
    a, b = _prompt(2, 1), _prompt(1, 2)
    e = torch.cat([a.embeds, b.embeds])  # (3, 6): three images
    h = torch.cat([a.hidden, b.hidden])
    formulas = {
        "add": lambda t: t[0] + t[1] + t[2],
        "subtract": lambda t: t[0] - (t[1] + t[2]) / 2,
        "norm average": lambda t: sum(t[i] / torch.sqrt(t[0] ** 2 + t[1] ** 2 + t[2] ** 2) for i in range(3)) / 3,
        "max": lambda t: torch.maximum(torch.maximum(t[0], t[1]), t[2]),
        "min": lambda t: torch.minimum(torch.minimum(t[0], t[1]), t[2]),
    }
    out = combine_prompts([a, b], method)
    torch.testing.assert_close(out.embeds, formulas[method](e)[None], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.hidden, formulas[method](h)[None], rtol=1e-5, atol=1e-6)
    assert torch.equal(out.uncond_embeds, a.uncond_embeds[:1]) and torch.equal(out.uncond_hidden, a.uncond_hidden[:1])
    single = combine_prompts([b], method)  # one image: kept as it is
    assert all(torch.equal(getattr(single, f), getattr(b, f)) for f in ("embeds", "hidden", "uncond_embeds"))


def test_norm_average_of_a_feature_zero_in_every_image_stays_finite():
    p = _prompt(2, 3)
    zeroed = ImagePrompt(p.embeds.index_fill(1, torch.tensor([2]), 0.0), p.hidden, p.uncond_embeds, p.uncond_hidden)
    twice = ImagePrompt(*(torch.cat([t[:1], t[:1]]) for t in (zeroed.embeds, zeroed.hidden, zeroed.uncond_embeds,
                                                                zeroed.uncond_hidden)))
    out = combine_prompts([twice], "norm average")
    assert torch.isfinite(out.embeds).all() and out.embeds[0, 2] == 0
    # two equal images: each feature / (sqrt(2) |f|), averaged -> sign(f) / sqrt(2)
    want = torch.sign(zeroed.embeds[0]) / math.sqrt(2)
    torch.testing.assert_close(out.embeds[0], want)


# ------------------------------------------------------------------------------------------------ image preparation

def _cas_pixel(img, y, x, c, amount):
    """Contrast-adaptive sharpening of one pixel, written out: zero outside the image; soft min/max of the cross
    (N, W, centre, E, S) plus the diagonals; peak weight -sqrt(min(low, 2 - high) / high) * (1/8 + amount/40)."""
    h, w = len(img), len(img[0])

    def at(dy, dx):
        yy, xx = y + dy, x + dx
        return img[yy][xx][c] if 0 <= yy < h and 0 <= xx < w else 0.0

    cross = [at(-1, 0), at(0, -1), at(0, 0), at(0, 1), at(1, 0)]
    diag = [at(-1, -1), at(-1, 1), at(1, -1), at(1, 1)]
    low = max(min(cross), 0.0) + max(min(diag), 0.0)
    high = min(max(cross), 1.0) + min(max(diag), 1.0)
    if high == 0:
        return 0.0
    peak = -math.sqrt(min(low, 2 - high) / high) * (1 / 8 + amount * (1 / 5 - 1 / 8))
    value = ((at(-1, 0) + at(0, -1) + at(0, 1) + at(1, 0)) * peak + at(0, 0)) / (1 + 4 * peak)
    return min(max(value, 0.0), 1.0)


def test_sharpening_by_its_formula():
    from ipadapter_suite.ipadapter_core.image_ops import sharpen
    image = torch.rand(1, 6, 5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    image[0, 2, 2] = 0.0  # a dark pixel among bright ones
    got = sharpen(image, 0.6)
    rows = image[0].tolist()
    want = torch.tensor([[[_cas_pixel(rows, y, x, c, 0.6) for c in range(3)] for x in range(5)] for y in range(6)],
                        dtype=torch.float64)
    torch.testing.assert_close(got[0], want, rtol=1e-9, atol=1e-12)
    assert sharpen(image, 0.0) is image
    flat = torch.full((1, 5, 5, 3), 0.4, dtype=torch.float64)
    torch.testing.assert_close(sharpen(flat, 1.0)[:, 1:-1, 1:-1], flat[:, 1:-1, 1:-1])  # nothing to sharpen inside


def _pil_resize(image, size, pil):
    """(1, H, W, 3) resized by PIL, one float ('F') channel at a time."""
    import numpy as np
    from PIL import Image
    channels = [np.array(Image.fromarray(image[0, :, :, c].numpy(), mode="F").resize(
        (size, size), Image.Resampling[pil])) for c in range(3)]
    return torch.from_numpy(np.stack(channels, axis=-1))[None]


@pytest.mark.parametrize("mode, pil", [("lanczos", "LANCZOS"), ("bilinear", "BILINEAR"), ("nearest", "NEAREST")])
def test_resize_modes_match_pil(mode, pil):
    from ipadapter_suite.ipadapter_core.image_ops import resize_images
    image = torch.rand(1, 37, 29, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(resize_images(image, 16, mode), _pil_resize(image, 16, pil), rtol=1e-4, atol=2e-4)
    small = image[:, :10, :10].contiguous()  # upscaling too
    torch.testing.assert_close(resize_images(small, 16, mode), _pil_resize(small, 16, pil), rtol=1e-4, atol=2e-4)


# ------------------------------------------------------------------------------------------------ tiles

@pytest.mark.parametrize("h, w, size, starts", [
    (100, 390, (256, 998), [(0, 0), (0, 247), (0, 494), (0, 742)]),  # 4 tiles overlapping by (1024 - 998) / 3
    (50, 400, (256, 1024), [(0, 0), (0, 256), (0, 512), (0, 768)]),  # 8:1 -> 256 x 2048, centre 4 tiles kept
    (300, 330, (512, 512), [(0, 0), (0, 256), (256, 0), (256, 256)]),  # near square: cropped, 2 x 2
    (400, 200, (512, 256), [(0, 0), (256, 0)]),  # tall 2:1
])
def test_tile_layout_as_the_incumbent_cuts(h, w, size, starts):
    from ipadapter_suite.ipadapter_core.tiles import tile_layout, tiles_of
    image = torch.rand(2, h, w, 3, generator=torch.Generator().manual_seed(7))
    layout = tile_layout(image)
    assert tuple(layout.image.shape[1:3]) == size and list(layout.boxes) == starts
    assert layout.masks.shape == (len(starts), *size)
    for mask, (top, left) in zip(layout.masks, starts):
        assert mask.sum() == 256 * 256 and mask[top:top + 256, left:left + 256].min() == 1
    assert layout.masks.amax(0).min() == 1  # the tiles cover the picture
    pieces = tiles_of(layout)
    top, left = starts[-1]
    assert torch.equal(pieces[-1], layout.image[1, top:top + 256, left:left + 256])  # last tile of image 2


def test_enhancer_merge_pools_each_tile_into_its_cell():
    """2 x 2 tiles of a 2 x 2 patch grid: the tiles' grids side by side are 4 x 4, pooled back to 2 x 2, so cell
    (i, j) is the mean of tile (i, j)'s four patch tokens; the class token is the tiles' mean."""
    from ipadapter_suite.ipadapter_core.tiles import merge_tile_embeds, merge_tile_hidden, split_grid
    g = torch.Generator().manual_seed(8)
    full, per_tile = torch.randn(1, 5, 6, generator=g), torch.randn(4, 5, 6, generator=g)
    merged = merge_tile_hidden(full, per_tile, 2, 0.25)
    cells = torch.stack([per_tile[t, 1:].mean(0) for t in range(4)])  # tile t = row-major cell t
    want = torch.cat([per_tile[:, 0].mean(0, keepdim=True), cells])[None]
    torch.testing.assert_close(merged, 0.25 * full + 0.75 * want)
    embeds, tile_embeds = torch.randn(1, 6, generator=g), torch.randn(4, 6, generator=g)
    torch.testing.assert_close(merge_tile_embeds(embeds, tile_embeds, 2, 0.4), 0.4 * embeds + 0.6 * tile_embeds.mean(
        0, keepdim=True))
    image = torch.rand(1, 6, 9, 3, generator=g)
    parts = split_grid(image, 3)
    assert parts.shape == (9, 2, 3, 3) and torch.equal(parts[5], image[0, 2:4, 6:9])  # row 1, column 2


def test_regions_travel_through_save_load_and_concat(tmp_path):
    from ipadapter_suite.ipadapter_core import load_image_prompt, save_image_prompt
    p = _prompt(2, 9)
    regions = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(1))
    tiled = ImagePrompt(p.embeds, p.hidden, p.uncond_embeds, p.uncond_hidden, regions=regions)
    save_image_prompt(tmp_path / "t.safetensors", tiled)
    assert torch.equal(load_image_prompt(tmp_path / "t.safetensors").regions, regions)
    joined = combine_prompts([tiled, _prompt(1, 2)], "concat")
    assert torch.equal(joined.regions[:2], regions) and torch.equal(joined.regions[2], torch.ones(4, 6))
    assert combine_prompts([_prompt(1, 3), _prompt(1, 2)], "concat").regions is None
    assert combine_prompts([tiled], "average").regions is None  # one image of mean features acts everywhere
    with pytest.raises(ValueError, match="regions"):
        ImagePrompt(p.embeds, p.hidden, p.uncond_embeds, p.uncond_hidden, regions=regions[:1])
