"""The incumbent's controls in the real host (tiny UNets with the SD1.5 / SDXL block layouts, every cross-attention
layer instrumented): each acts where, and only where, it should. Block tables are written out in
test_incumbent_controls_core.RUN_BLOCKS, independently of ipadapter_core."""
import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from test_controls_host import _adapter, _apply, acting, record
from test_incumbent_controls_core import RUN_BLOCKS
from tiny_adapters import random_prompt, rel_err, tiny_inputs

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)

COMPOSITION_T = {"sdxl": {3}, "sd15": {4, 5}}  # the incumbent's composition layers (t)
STYLE_T = {"sdxl": {6}, "sd15": {0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15}}


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def pair(request, host):
    from parity_models import build_pair
    return build_pair(request.param, seed=3, context_dim=32)


def _keys(info, ts):
    """Host keys of every transformer of the blocks at incumbent indices ``ts``."""
    blocks = {RUN_BLOCKS[info["layout"]][t] for t in ts}
    return {key for key, _ in info["cross_attn"] if key[:2] in blocks}


def _first_run(info, keys):
    """The first of ``keys`` in the order the UNet runs them."""
    order = {block: i for i, block in enumerate(RUN_BLOCKS[info["layout"]])}
    return min(keys, key=lambda k: (order[k[:2]], k[2]))


def _rows(log, key):
    """(uncond row delta, cond row delta) of a call with contexts [cond, uncond]: the host runs uncond first."""
    delta = log[key][0]
    return delta[0], delta[1]


@pytest.mark.parametrize("preset, ts", [
    ("strong style transfer", lambda f: set(range(len(RUN_BLOCKS[f]))) - COMPOSITION_T[f]),
    ("strong middle", lambda f: set(range(len(RUN_BLOCKS[f])))),
])
def test_block_presets_act_on_exactly_their_blocks(ext, pair, tmp_path, preset, ts):
    patcher, _, info = pair
    model = _apply(ext, patcher, _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6), layer_preset=preset)
    x, ctx, _ = tiny_inputs(7)
    log, _ = record(model, info, x, [ctx])
    assert acting(log) == _keys(info, ts(info["layout"]))


def test_weak_groups_scale_the_first_layer(ext, pair, tmp_path):
    """The first layer run (an input block) has the same input in every run: its delta scales with the preset's
    weight there (weak input, strong middle: 0.2; ease in (incumbent) at t = 0: 0.05 + 0.95 = 1)."""
    patcher, _, info = pair
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    x, ctx, _ = tiny_inputs(7)
    first = _first_run(info, {k for k, _ in info["cross_attn"]})
    assert first[0] == "input"
    plain, _ = record(_apply(ext, patcher, adapter, prompt, 0.9), info, x, [ctx])
    for preset, factor in (("weak input", 0.2), ("strong middle", 0.2), ("ease in (incumbent)", 1.0)):
        got, _ = record(_apply(ext, patcher, adapter, prompt, 0.9, layer_preset=preset), info, x, [ctx])
        torch.testing.assert_close(got[first][0], factor * plain[first][0], rtol=1e-5, atol=1e-7)


def test_style_transfer_precise_pushes_composition_through_the_uncond_rows(ext, pair, tmp_path):
    patcher, _, info = pair
    family = info["layout"]
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    x, ctx, _ = tiny_inputs(7)
    log, _ = record(_apply(ext, patcher, adapter, prompt, layer_preset="style transfer precise"), info, x,
                    [ctx, ctx])  # the same text for both rows: they differ by the image branch only
    for key in _keys(info, COMPOSITION_T[family]):
        uncond, cond = _rows(log, key)
        assert cond.abs().max() == 0 and uncond.abs().max() > 0, key
    for key in _keys(info, STYLE_T[family]):
        uncond, cond = _rows(log, key)
        assert cond.abs().max() > 0, key
    if family == "sdxl":  # input 8 runs first: its uncond row gets what the cond row gets without the swap
        first = ("input", 8, 0)
        normal, _ = record(_apply(ext, patcher, adapter, prompt, layer_preset="style and composition"), info, x,
                           [ctx, ctx])
        assert rel_err(_rows(log, first)[0], _rows(normal, first)[1]) <= 1e-4  # rows of one batch vs another row


def test_composition_precise_swaps_every_other_layer(ext, pair, tmp_path):
    patcher, _, info = pair
    family = info["layout"]
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    x, ctx, _ = tiny_inputs(7)
    log, _ = record(_apply(ext, patcher, adapter, prompt, layer_preset="composition precise"), info, x, [ctx, ctx])
    composition = _keys(info, COMPOSITION_T[family])
    for key, _ in info["cross_attn"]:
        uncond, cond = _rows(log, key)
        if key in composition:
            assert cond.abs().max() > 0, key
        else:
            assert cond.abs().max() == 0 and uncond.abs().max() > 0, key


def test_precise_swap_with_unfolded_frames(ext, pair, tmp_path):
    """Per-frame tokens (batch unfold): frame i's uncond rows get image i's cond tokens on the swapped layers."""
    patcher, _, info = pair
    family = info["layout"]
    adapter, prompt = _adapter(ext, info, tmp_path, "plus", seed=8), random_prompt(ext, 2, 9)
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    log, _ = record(_apply(ext, patcher, adapter, prompt, layer_preset="style transfer precise", unfold_batch=True),
                    info, x, [ctx, ctx])
    key = _first_run(info, _keys(info, COMPOSITION_T[family]))
    delta = log[key][0]  # (uncond frame 0, uncond frame 1, cond frame 0, cond frame 1)
    assert delta[2:].abs().max() == 0 and delta[0].abs().max() > 0 and delta[1].abs().max() > 0
    if family == "sdxl":
        normal, _ = record(_apply(ext, patcher, adapter, prompt, layer_preset="style and composition",
                                  unfold_batch=True), info, x, [ctx, ctx])
        assert rel_err(delta[:2], normal[key][0][2:]) <= 1e-4


def test_embeds_scaling_on_the_first_layer(ext, pair, tmp_path):
    """At weight 1, K+V is V only; the C penalty is K+V at weight w·C/1280; K+mean(V) differs from both."""
    patcher, _, info = pair
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    x, ctx, _ = tiny_inputs(7)
    first = _first_run(info, {k for k, _ in info["cross_attn"]})
    width = dict(info["cross_attn"])[first]

    def delta(weight, scaling):
        log, _ = record(_apply(ext, patcher, adapter, prompt, weight, embeds_scaling=scaling), info, x, [ctx])
        return log[first][0]

    v_only = delta(1.0, "V only")
    torch.testing.assert_close(delta(1.0, "K+V"), v_only, rtol=1e-5, atol=1e-6)
    kv_half = delta(0.1, "K+V")  # the tiny layers are 32-64 wide: 0.1·1280/C stays in the widget range
    assert (kv_half - 0.1 * v_only).abs().max() > 1e-4  # not a multiple of the output
    torch.testing.assert_close(delta(0.1 * 1280 / width, "K+V w/ C penalty"), kv_half, rtol=1e-4, atol=1e-6)
    assert (delta(0.1 * 1280 / width, "K+mean(V) w/ C penalty") - kv_half).abs().max() > 1e-4


def test_style_composition_node_puts_each_prompt_on_its_layers(ext, pair, tmp_path):
    patcher, _, info = pair
    family = info["layout"]
    adapter = _adapter(ext, info, tmp_path)
    style, composition = random_prompt(ext, 1, 6), random_prompt(ext, 1, 11)
    patching = ext.host.patching
    x, ctx, _ = tiny_inputs(7)
    both = patching.apply_style_composition(patcher, adapter, style, composition, 0.9, 0.7, False, 0.0, 1.0)
    log, _ = record(both, info, x, [ctx])
    assert acting(log) == _keys(info, STYLE_T[family] | COMPOSITION_T[family])
    # the first layer run sees the same input as the single-prompt runs
    first = _first_run(info, acting(log))
    if family == "sdxl":  # input 8, a composition layer: the composition prompt at weight_composition
        alone = _apply(ext, patcher, adapter, composition, 0.7, layer_preset="composition")
    else:  # input 1, a style layer: the style prompt at weight_style
        alone = _apply(ext, patcher, adapter, style, 0.9, layer_preset="style transfer")
    torch.testing.assert_close(log[first][0], record(alone, info, x, [ctx])[0][first][0], rtol=1e-5, atol=1e-7)
    expanded = patching.apply_style_composition(patcher, adapter, style, composition, 0.9, 0.7, True, 0.0, 1.0)
    log, _ = record(expanded, info, x, [ctx])
    assert acting(log) == {k for k, _ in info["cross_attn"]}
    attn2 = expanded.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(len(p.branches) == 1 for p in attn2.values())  # one prompt per layer, never both


def test_a_tiled_prompt_acts_tile_by_tile_in_its_regions(ext, pair, tmp_path):
    """Apply with a prompt of two tiles = two applies of one tile each, masked to the tile's half."""
    from parity_models import host_eps
    patcher, _, info = pair
    adapter = _adapter(ext, info, tmp_path, "plus", seed=8)
    tiles = random_prompt(ext, 2, 9)
    left = torch.zeros(2, 16, 32)
    left[0, :, :16] = 1.0
    left[1, :, 16:] = 1.0
    tiled = ext.ipadapter_core.ImagePrompt(tiles.embeds, tiles.hidden, tiles.uncond_embeds, tiles.uncond_hidden,
                                           regions=left)
    g = torch.Generator().manual_seed(4)
    x, ctx_c, ctx_u = torch.randn(1, 4, 8, 16, generator=g), torch.randn(1, 5, 32, generator=g), torch.randn(
        1, 5, 32, generator=g)
    got = host_eps(_apply(ext, patcher, adapter, tiled, 0.8), x, 1.7, [ctx_c, ctx_u])
    by_hand = patcher
    for i in range(2):
        by_hand = _apply(ext, by_hand, adapter, tiled.image(i), 0.8, attn_mask=left[i:i + 1])
    want = host_eps(by_hand, x, 1.7, [ctx_c, ctx_u])
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-5
    first = _first_run(info, {k for k, _ in info["cross_attn"]})  # each half sees only its tile there
    tiled_log, _ = record(_apply(ext, patcher, adapter, tiled, 0.8), info, x, [ctx_c])
    joined_log, _ = record(_apply(ext, patcher, adapter, tiles, 0.8), info, x, [ctx_c])
    assert rel_err(tiled_log[first][0], joined_log[first][0]) > 1e-2  # not the tiles' tokens concatenated
    with pytest.raises(ext.ipadapter_core.InputError, match="cannot be unfolded"):
        _apply(ext, patcher, adapter, tiled, unfold_batch=True)


def test_regional_prompt_node_is_masked_applies_and_masked_texts(ext, pair, tmp_path):
    from parity_models import host_eps
    patcher, _, info = pair
    adapter = _adapter(ext, info, tmp_path)
    first, second = random_prompt(ext, 1, 6), random_prompt(ext, 1, 7)
    left = torch.zeros(1, 16, 16)
    left[:, :, :8] = 1.0
    g = torch.Generator().manual_seed(5)
    ctx, text_1, text_2, neg = (torch.randn(1, 5, 32, generator=g) for _ in range(4))
    positive, negative = [[ctx, {}]], [[neg, {}]]
    node = ext.nodes.NODE_CLASS_MAPPINGS["IPAdapterRegionalPrompt"]
    with torch.inference_mode():
        model, pos, neg_out = node.execute(
            patcher, adapter, positive, negative, 0.9, 0.7, 0.0, 1.0, "V only", image_prompt_1=first, mask_1=left,
            text_1=[[text_1, {}]], image_prompt_2=second, mask_2=1 - left, text_2=[[text_2, {}]]).args
    assert neg_out is negative and pos[0] is positive[0] and len(pos) == 3
    for entry, text, mask in ((pos[1], text_1, left), (pos[2], text_2, 1 - left)):
        assert entry[0] is text and torch.equal(entry[1]["mask"], mask) and entry[1]["mask_strength"] == 0.7
        assert entry[1]["set_area_to_bounds"] is False
    x = torch.randn(1, 4, 16, 16, generator=g)
    by_hand = _apply(ext, _apply(ext, patcher, adapter, first, 0.9, attn_mask=left), adapter, second, 0.9,
                     attn_mask=1 - left)
    for a, b in zip(host_eps(model, x, 1.7, [ctx, neg]), host_eps(by_hand, x, 1.7, [ctx, neg])):
        assert torch.equal(a, b)
    with pytest.raises(ext.ipadapter_core.InputError, match="region 2 .* no mask: connect mask_2"):
        node.execute(patcher, adapter, positive, negative, 0.9, 0.7, 0.0, 1.0, "V only", image_prompt_1=first,
                     mask_1=left, text_2=[[text_2, {}]])
