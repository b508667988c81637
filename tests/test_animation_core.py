"""Animation in the pure-torch core: which frame each row of a call is (AnimateDiff-Evolved's ad_params, the host's
context window, row order), the patch's per-frame tokens / masks / weights picked by that frame against formulas
written out here, the token-only storage, and the frame weight schedules and crossfade batches."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

from ipadapter_suite.ipadapter_core import (FrameWeights, ImagePrompt, InputError, IPAdapterModel, IPAttentionPatch,
                                            build_branches, crossfade, frame_curve, with_default_uncond)
from ipadapter_suite.ipadapter_core.frames import CallRows, call_rows
from official_formats import ip_layers, plus_proj
from test_core_math import TINY_WIDTHS, reference_attention

CTX, HIDDEN, PATCHES = 32, 48, 5


def _adapter(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {"image_proj": plus_proj(64, CTX, hidden=HIDDEN, depth=1), "ip_adapter": ip_layers(TINY_WIDTHS, CTX)}
    sd = {part: {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in d.items()} for part, d in sd.items()}
    return IPAdapterModel.from_state_dict(sd)


def _prompt(images, seed=1, negative=None):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(images, PATCHES, HIDDEN, generator=g)
    zero = torch.randn(1, PATCHES, HIDDEN, generator=g)
    prompt = with_default_uncond(torch.randn(images, 8, generator=g), hidden, zero)
    if negative is None:
        return prompt
    return ImagePrompt(prompt.embeds, hidden, prompt.uncond_embeds, negative)


# ------------------------------------------------------------------------------------------ rows of a call

def test_rows_are_frames_from_sub_idxs_then_the_context_window_then_row_order():
    window = SimpleNamespace(index_list=[4, 5, 6, 7], dim=0)
    ad = {"full_length": 8, "context_length": 4, "sub_idxs": [2, 3, 4, 5]}
    assert call_rows({"cond_or_uncond": [1, 0], "ad_params": ad, "context_window": window}, 8) == \
        CallRows((1, 0), 4, (2, 3, 4, 5))
    assert call_rows({"cond_or_uncond": [0], "context_window": window}, 4).frames == (4, 5, 6, 7)
    assert call_rows({"ad_params": dict(ad, sub_idxs=None), "context_window": window}, 4).frames == (4, 5, 6, 7)
    video = SimpleNamespace(index_list=[4, 5, 6, 7], dim=2)  # windows over a video latent's time axis, not rows
    assert call_rows({"context_window": video}, 4).frames is None
    assert call_rows({"ad_params": ad}, 6).frames is None  # a list that does not fit the rows: row order
    assert call_rows({"ad_params": dict(ad, sub_idxs=[0, 1, 2, 3])}, 4).frames is None  # the first window
    with pytest.raises(ValueError, match="does not split"):
        call_rows({"cond_or_uncond": [1, 0]}, 5)


# ------------------------------------------------------------------------------------------ the patch per frame

def _call(patch, q, frames=None, chunks=(1, 0), **extra):
    options = {"n_heads": 2, "cond_or_uncond": list(chunks), **extra}
    if frames is not None:
        options["ad_params"] = {"full_length": 99, "context_length": len(frames), "sub_idxs": list(frames)}
    k = torch.zeros(q.shape[0], 3, q.shape[-1])
    return patch(q, k, k, options) - reference_attention(q, k, k, 2)


def test_token_branches_project_each_frames_tokens_and_hold_no_keys():
    adapter = _adapter()
    negative = torch.randn(6, PATCHES, HIDDEN)  # a negative per frame
    prompt = _prompt(6, negative=negative)
    branches = build_branches(adapter, prompt, 0.7, unfold=True)
    layer = adapter.ip_adapter["3"]
    branch = branches[3]
    assert branch.k_cond is None and branch.projection[0] is layer.to_k_ip.weight  # the adapter's, not a copy
    assert len({id(b.frames) for b in branches.values()}) == 1  # one token store for every layer
    cond, uncond = adapter.image_tokens(prompt.hidden), adapter.image_tokens(negative)
    assert branch.frames.token_bytes == (cond.numel() + uncond.numel()) * 4
    frames = (4, 5, 6, 7, 8)  # frames 6..8: the last image (5)
    q = torch.randn(10, 7, TINY_WIDTHS[1])
    got = _call(IPAttentionPatch((branch,)), q, frames)
    for row, (chunk, f) in enumerate([(u, f) for u in (uncond, cond) for f in frames]):
        tokens = chunk[min(f, 5)]
        want = 0.7 * reference_attention(q[row:row + 1], (tokens @ layer.to_k_ip.weight.T)[None],
                                         (tokens @ layer.to_v_ip.weight.T)[None], 2)
        torch.testing.assert_close(got[row:row + 1], want, rtol=1e-4, atol=1e-5)


def test_default_negative_is_stored_once_and_one_image_keeps_its_keys():
    adapter = _adapter()
    branches = build_branches(adapter, _prompt(5), 1.0, unfold=True)
    frames = next(iter(branches.values())).frames
    assert frames.tokens.shape == (5 + 1, 16, CTX) and frames.cond_sets == 5  # one uncond set for all frames
    single = build_branches(adapter, _prompt(1), 1.0, unfold=True)
    assert all(b.frames is None and b.k_cond.shape == (1, 16, b.k_cond.shape[-1]) for b in single.values())
    patch = IPAttentionPatch(tuple(branches.values())[:1])
    assert copy.deepcopy(patch) is patch and copy.deepcopy(frames) is frames


def test_frame_weights_and_masks_are_picked_by_absolute_frame():
    adapter = _adapter()
    weights = [0.5, 1.0, 1.5, 2.0]
    masks = torch.rand(3, 4, 4)  # frames 2, 3, ...: the last mask
    branch = build_branches(adapter, _prompt(1), 1.0, mask=masks, frame_weights=weights)[1]
    plain = build_branches(adapter, _prompt(1), 1.0)[1]
    q = torch.randn(6, 16, TINY_WIDTHS[0])
    shape = (1, 4, 4, 4)  # the latent: this layer's grid is 4x4 = 16 positions
    frames = (1, 3, 6)
    got = _call(IPAttentionPatch((branch,)), q, frames, original_shape=shape)
    unmasked = _call(IPAttentionPatch((plain,)), q, frames, original_shape=shape)
    for row in range(6):
        f = frames[row % 3]
        mask = masks[min(f, 2)].reshape(16, 1)
        torch.testing.assert_close(got[row], unmasked[row] * mask * weights[min(f, 3)], rtol=1e-4, atol=1e-6)


def test_rows_without_a_window_read_their_row_and_calls_keep_one_selection():
    adapter = _adapter()
    branch = build_branches(adapter, _prompt(3), 1.0, unfold=True)[1]
    patch = IPAttentionPatch((branch,))
    q = torch.randn(8, 16, TINY_WIDTHS[0])
    by_rows = _call(patch, q)  # 4 rows a chunk: frame 3 reads the last image
    torch.testing.assert_close(_call(patch, q, frames=(0, 1, 2, 3)), by_rows)  # the first window: row order
    shifted = _call(patch, torch.cat([q[2:4], q[6:8]]), frames=(2, 3))
    torch.testing.assert_close(shifted, torch.cat([by_rows[2:4], by_rows[6:8]]), rtol=1e-5, atol=1e-6)
    tokens, inverse = branch.frames._call[1:]
    assert tokens.shape[0] == 2 and inverse.tolist() == [0, 0, 1, 1]  # uncond shared, frames 2, 3 -> image 2


# ------------------------------------------------------------------------------------------ schedules

def test_frame_curves_against_their_formulas():
    assert frame_curve("0.25, 0.5, 1", "custom").values == (0.25, 0.5, 1.0)
    assert frame_curve("1, 0", "linear", 5).values == (1.0, 0.75, 0.5, 0.25, 0.0)
    eases = {"ease in": lambda t: 1 - math.cos(t * math.pi / 2), "ease out": lambda t: math.sin(t * math.pi / 2),
             "ease in-out": lambda t: (1 - math.cos(t * math.pi)) / 2}
    for timing, ease in eases.items():
        got = frame_curve("0.2, 1.2", timing, 9).values
        assert got == pytest.approx([0.2 + ease(i / 8) for i in range(9)]), timing
    held = frame_curve("1, 0", "linear", 10, start_frame=2, end_frame=6).values
    assert held == pytest.approx([1, 1, 1, 2 / 3, 1 / 3, 0, 0, 0, 0, 0])
    assert frame_curve("0.3", "ease in", 3).values == pytest.approx([0.3] * 3)
    assert frame_curve("0, 1", "linear", 1).values == (1.0,)
    assert FrameWeights((0.2, 0.5, 0.8)).inverted().values == pytest.approx((0.8, 0.5, 0.2))
    with pytest.raises(InputError, match="start_frame 4 is not before end_frame 4"):
        frame_curve("1, 0", "linear", 4, start_frame=4)
    with pytest.raises(InputError, match="weights is empty"):
        frame_curve(" ", "custom")


def test_crossfade_batches():
    images = torch.arange(3.0)[:, None, None, None].expand(3, 2, 2, 3)  # image i is all i
    fade = FrameWeights((1.0, 0.5, 0.0))
    ids = lambda batch: batch[:, 0, 0, 0].long().tolist()  # noqa: E731
    w, inv, one, two = crossfade(images, fade, "full batch")
    assert w.values == (1, 0.5, 0) * 3 and ids(one) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and two is one
    w, inv, one, two = crossfade(images, fade, "shift batches", 1, 2)
    assert ids(one) == [0, 0, 0, 0, 1, 1, 1, 2, 2] and ids(two) == [0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert w.values == (1, 1, 0.5, 0, 1, 0.5, 0, 0, 0) and inv.values == tuple(1 - x for x in w.values)
    w, inv, one, two = crossfade(images, fade, "alternate batches")
    assert ids(one) == [0, 0, 0, 2, 2, 2] and ids(two) == [1, 1, 1, 1, 1, 1]
    assert w.values == (1, 0.5, 0, 0, 0.5, 1) and inv.values == (0, 0.5, 1, 1, 0.5, 0)
    for batch_1, batch_2, a, b in ((one, two, w.values, inv.values),):
        image_weight = {}  # every frame: the two images' weights sum to 1 (a crossfade)
        for f in range(6):
            assert a[f] + b[f] == 1
            image_weight.setdefault(ids(batch_2)[f], []).append(b[f])
        assert image_weight[1] == [0, 0.5, 1, 1, 0.5, 0]  # image 1 fades in, then out, in the same batch
    with pytest.raises(InputError, match="needs at least 2 images"):
        crossfade(images[:1], fade, "shift batches")
