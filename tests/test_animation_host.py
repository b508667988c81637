"""Animation in the real host: sliding context windows give every frame exactly what the unwindowed run gives, for
batch unfold, per-frame masks and per-frame weights (docs/inference.md#animation).

Windows are driven three ways: by AnimateDiff-Evolved's published contract (``transformer_options["ad_params"]``
built as its sampler builds it: full_length, context_length, sub_idxs), by the host's own context handler
(``comfy.context_windows``, whose ``context_window.index_list`` names the frames; its step lookup is replaced
because this host cannot window an image batch itself), and, when the pack is installed, by AnimateDiff-Evolved's
own context options and sampler with no motion model. Without a motion model frames are independent, so a frame
computed in any window, with any overlap and fuse method, must equal the unwindowed frame."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from test_controls_host import _adapter, _apply
from tiny_adapters import CTX, SIGMA, random_prompt

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
FRAMES = 8
STATIC = [[0, 1, 2, 3], [4, 5, 6, 7]]  # windows of 4, no overlap
OVERLAP = [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]  # windows of 4, overlap 2
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def world(host, tmp_path_factory):
    from parity_models import build_pair
    from conftest import import_extension
    ext = import_extension()
    patcher, _, info = build_pair("sd15", seed=3, context_dim=CTX)
    adapter = _adapter(ext, info, tmp_path_factory.mktemp("anim"), "plus", seed=8)
    g = torch.Generator().manual_seed(11)
    inputs = dict(x=torch.randn(FRAMES, 4, 8, 8, generator=g), contexts=[torch.randn(1, 5, CTX, generator=g),
                                                                         torch.randn(1, 5, CTX, generator=g)])
    return dict(ext=ext, patcher=patcher, info=info, adapter=adapter, **inputs)


def _controls(w, control: str):
    """The Apply options of each per-frame control, and the prompt: unfold (one image per frame), masks (one per
    frame), weights (one per frame), all (5 images, 8 masks, 6 weights: fewer entries than frames repeat)."""
    ext = w["ext"]
    masks = torch.rand(FRAMES, 16, 16, generator=torch.Generator().manual_seed(5))
    weights = ext.ipadapter_core.FrameWeights(tuple(0.25 * (i + 1) for i in range(FRAMES)))
    if control == "unfold":
        return random_prompt(ext, FRAMES, 9), dict(unfold_batch=True)
    if control == "masks":
        return random_prompt(ext, 1, 9), dict(attn_mask=masks)
    if control == "weights":
        return random_prompt(ext, 1, 9), dict(frame_weights=weights)
    few = ext.ipadapter_core.FrameWeights(weights.values[:6])
    return random_prompt(ext, 5, 9), dict(unfold_batch=True, attn_mask=masks, frame_weights=few)


def _options(model, **transformer_options):
    options = dict(model.model_options)
    options["transformer_options"] = {**options.get("transformer_options", {}), **transformer_options}
    return options


def ad_windows(model, x, contexts, windows, contract=True):
    """eps of every frame from AnimateDiff-Evolved-style windows: each window's frames run alone with
    ``ad_params`` set as its sampler sets them (``contract=False``: without them, as a pack ignoring the contract
    sees it); frames in several windows are averaged."""
    from parity_models import host_eps
    total = [torch.zeros_like(x) for _ in contexts]
    counts = torch.zeros(x.shape[0], 1, 1, 1)
    for idxs in windows:
        params = {"full_length": x.shape[0], "context_length": len(idxs), "sub_idxs": idxs}
        options = _options(model, ad_params=params) if contract else _options(model)
        for t, eps in zip(total, host_eps(model, x[idxs], SIGMA, contexts, model_options=options)):
            t[idxs] += eps
        counts[idxs] += 1
    return [t / counts for t in total]


def host_windows(model, x, contexts, overlap: int, fuse: str):
    """eps from the host's own context handler over the batch dimension (windows of 4)."""
    import comfy.context_windows as cw
    from parity_models import host_eps

    class BatchWindows(cw.IndexListContextHandler):
        def set_step(self, timestep, model_options):  # the host looks the step up in sample_sigmas, which
            self._step = 0  # fails for a batch of images (per-row timesteps); one step here

    handler = BatchWindows(cw.get_matching_context_schedule(cw.ContextSchedules.STATIC_STANDARD),
                           cw.get_matching_fuse_method(fuse), context_length=4, context_overlap=overlap, dim=0)
    options = _options(model)
    options["context_handler"] = handler
    return host_eps(model, x, SIGMA, contexts, model_options=options)


def per_frame_error(got, want):
    return [((g - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want)]


def _unwindowed(w, model):
    from parity_models import host_eps
    return host_eps(model, w["x"], SIGMA, w["contexts"])


@pytest.mark.parametrize("control", ["unfold", "masks", "weights", "all"])
@pytest.mark.parametrize("windows", ["static", "overlap"])
def test_animatediff_contract_windows_equal_the_unwindowed_run(world, control, windows):
    prompt, options = _controls(world, control)
    model = _apply(world["ext"], world["patcher"], world["adapter"], prompt, **options)
    want = _unwindowed(world, model)
    got = ad_windows(model, world["x"], world["contexts"], STATIC if windows == "static" else OVERLAP)
    for g, wnt in zip(got, want):  # cond and uncond
        errors = per_frame_error(g, wnt)
        assert max(errors) <= TOLERANCE, errors
    if windows == "static":  # the test sees the failure it guards against: row order gives frames 5-8 frames 1-4's
        blind = ad_windows(model, world["x"], world["contexts"], STATIC, contract=False)[0]
        errors = per_frame_error(blind, want[0])
        assert max(errors[:4]) <= TOLERANCE and min(errors[4:]) > 1e-2, errors


@pytest.mark.parametrize("control", ["unfold", "masks", "weights", "all"])
@pytest.mark.parametrize("overlap,fuse", [(0, "flat"), (2, "pyramid"), (2, "relative"), (2, "overlap-linear")])
def test_host_context_window_equals_the_unwindowed_run(world, control, overlap, fuse):
    prompt, options = _controls(world, control)
    model = _apply(world["ext"], world["patcher"], world["adapter"], prompt, **options)
    want = _unwindowed(world, model)
    got = host_windows(model, world["x"], world["contexts"], overlap, fuse)
    for g, wnt in zip(got, want):
        errors = per_frame_error(g, wnt)
        assert max(errors) <= TOLERANCE, errors


@pytest.mark.parametrize("images", [5, 10])
def test_fewer_images_repeat_the_last_and_more_use_the_first(world, images):
    from parity_models import host_eps
    ext = world["ext"]
    prompt = random_prompt(ext, images, 12)
    model = _apply(ext, world["patcher"], world["adapter"], prompt, unfold_batch=True)
    got = ad_windows(model, world["x"], world["contexts"], STATIC)
    fields = ("embeds", "hidden", "uncond_embeds", "uncond_hidden")
    for frame in range(FRAMES):
        i = min(frame, images - 1)
        single = ext.ipadapter_core.ImagePrompt(*(getattr(prompt, f)[i:i + 1] for f in fields))
        alone = host_eps(_apply(ext, world["patcher"], world["adapter"], single), world["x"][frame:frame + 1],
                         SIGMA, world["contexts"])
        for g, want in zip(got, alone):
            assert per_frame_error(g[frame:frame + 1], want)[0] <= TOLERANCE, (frame, i)


def test_windowed_calls_hold_only_tokens_and_the_current_call(world):
    prompt, options = _controls(world, "all")
    model = _apply(world["ext"], world["patcher"], world["adapter"], prompt, **options)
    patches = model.model_options["transformer_options"]["patches_replace"]["attn2"].values()
    branches = [p.branches[0] for p in patches]
    frames = branches[0].frames
    assert all(b.k_cond is None and b.frames is frames for b in branches)
    assert frames.tokens.shape[0] == 5 + 1  # 5 images, one shared negative
    ad_windows(model, world["x"], world["contexts"], OVERLAP)
    tokens, inverse = frames._call[1:]
    assert tokens.shape[0] <= 4 + 1 and inverse.shape == (8,)  # the last window's sets only


# ------------------------------------------------------------------------------------------ AnimateDiff-Evolved

def animatediff_pack():
    """AnimateDiff-Evolved's folder: $ANIMATEDIFF_EVOLVED_PATH, or a folder of the host's custom_nodes."""
    env = os.environ.get("ANIMATEDIFF_EVOLVED_PATH")
    custom_nodes = None if HOST is None else Path(HOST) / "custom_nodes"
    folders = [Path(env)] if env else sorted(custom_nodes.iterdir()) if custom_nodes and custom_nodes.is_dir() else []
    return next((f for f in folders if (f / "animatediff" / "sampling.py").is_file()), None)


PACK = animatediff_pack()


def _import_pack():
    init = str(PACK / "__init__.py")
    loaded = next((m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == init), None)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("animatediff_evolved_pack", init,
                                                  submodule_search_locations=[str(PACK)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class SubIdxs:
    """An attn2 patch under ours (its ``inner``) that records the frames each call announces."""

    def __init__(self, seen):
        self.seen = seen

    def __deepcopy__(self, memo):  # the host's clone deep-copies patches: keep recording into the same list
        return self

    def __call__(self, q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention
        self.seen.append((extra.get("ad_params") or {}).get("sub_idxs"))
        return optimized_attention(q, k, v, extra["n_heads"])


@pytest.mark.skipif(PACK is None, reason="ComfyUI-AnimateDiff-Evolved not installed (custom_nodes or "
                                         "$ANIMATEDIFF_EVOLVED_PATH)")
@pytest.mark.parametrize("overlap,fuse", [(0, "flat"), (2, "pyramid"), (2, "relative")])
def test_animatediff_evolved_context_options_without_a_motion_model(world, overlap, fuse):
    import comfy.sample
    nodes = _import_pack().NODE_CLASS_MAPPINGS
    seen = []
    base = world["patcher"].clone()
    base.set_model_attn2_replace(SubIdxs(seen), *world["info"]["cross_attn"][0][0])
    prompt, options = _controls(world, "all")
    model = _apply(world["ext"], base, world["adapter"], prompt, **options)
    evolved = nodes["ADE_UseEvolvedSampling"]().use_evolved_sampling
    context = nodes["ADE_StandardStaticContextOptions"]().create_options(4, overlap, fuse_method=fuse)[0]
    noise = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    positive, negative = ([[c, {}]] for c in world["contexts"])

    def sample(m):  # one Euler step to sigma 0: the output is the guided denoised prediction of every frame
        return comfy.sample.sample(m, noise, 1, 5.0, "euler", "normal", positive, negative,
                                   torch.zeros_like(noise), seed=0)
    want = sample(evolved(model, beta_schedule="autoselect")[0])
    seen.clear()
    got = sample(evolved(model, beta_schedule="autoselect", context_options=context)[0])
    assert [0, 1, 2, 3] in seen and [4, 5, 6, 7] in seen  # the pack did window the batch
    errors = per_frame_error(got, want)
    assert max(errors) <= TOLERANCE, errors


def test_schedule_nodes_feed_apply_advanced_through_the_executor(world):
    """Frame Weights -> Crossfade Batches -> Apply IP-Adapter (Advanced), as a queued graph runs."""
    import graph_runner
    ext = world["ext"]
    graph_runner.register(ext.nodes.NODE_CLASS_MAPPINGS)
    graph = {
        "1": {"class_type": "IPAdapterFrameWeights", "inputs": {"weights": "1.0, 0.0", "timing": "linear",
                                                                 "frames": 4, "start_frame": 0, "end_frame": 9999}},
        "2": graph_runner.value("IMAGE", torch.rand(3, 16, 16, 3)),
        "3": {"class_type": "IPAdapterCrossfadeBatches", "inputs": {
            "image": ["2", 0], "frame_weights": ["1", 0], "method": "shift batches", "add_starting_frames": 0,
            "add_ending_frames": 0}},
        "4": graph_runner.value("MODEL", world["patcher"]), "5": graph_runner.value("IPADAPTER", world["adapter"]),
        "6": graph_runner.value("IMAGE_PROMPT", random_prompt(ext, FRAMES, 9)),
        "7": {"class_type": "ApplyIPAdapterAdvanced", "inputs": {
            "model": ["4", 0], "ipadapter": ["5", 0], "image_prompt": ["6", 0], "weight": 0.5, "start_at": 0.0,
            "end_at": 1.0, "layer_weights": "linear", "composition_weight": 1.0, "custom_layer_weights": "",
            "weight_curve": "constant", "unfold_batch": True, "frame_weights": ["3", 1]}},
    }
    for slot, (node, output) in {"model": ("7", 0), "frames": ("3", 4), "image_2": ("3", 3)}.items():
        graph[f"k{slot}"] = {"class_type": "Keep", "inputs": {"value": [node, output], "slot": slot}}
    result = graph_runner.run(graph)
    assert result.error is None and result.valid, result.message
    assert result.outputs["frames"] == 8 and result.outputs["image_2"].shape == (8, 16, 16, 3)
    patch = next(iter(result.outputs["model"].model_options["transformer_options"]["patches_replace"]["attn2"]
                      .values()))
    weights = patch.branches[0].frames.weights
    assert weights.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0] * 2)  # image_2's: the inverted fade


class WindowRows:
    """An attn2 replacement that records, per call, the rows it got and the window the host passed."""

    def __init__(self, seen):
        self.seen = seen

    def __deepcopy__(self, memo):  # the host's clone deep-copies patches: keep recording into the same list
        return self

    def __call__(self, q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention
        window = extra.get("context_window")
        if window is not None:
            self.seen.append((q.shape[0] // len(extra["cond_or_uncond"]), list(window.index_list),
                              getattr(window, "causal_anchor_index", None)))
        return optimized_attention(q, k, v, extra["n_heads"])


def _manual_windows_options():
    """(node class, causal_window_fix values the host's Context Windows (Manual) node takes: [None] where it has no
    such input)."""
    import inspect
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode
    takes = "causal_window_fix" in inspect.signature(ContextWindowsManualNode.execute).parameters
    return ContextWindowsManualNode, ([True, False] if takes else [None])


@pytest.mark.parametrize("causal_fix", [True, False])
@pytest.mark.parametrize("control", ["unfold", "all"])
def test_host_context_windows_node_gives_every_frame_its_own_data(world, control, causal_fix):
    """The host's own "Context Windows (Manual)" node (windows of 4, overlap 2, pyramid fuse) on the patched model,
    sampled by the host's sampler: every frame equals the unwindowed run, with the node's causal_window_fix on
    (windows after the first run with the frame before them as an extra first row) and off. The recorder shows the
    host did add that row when the fix is on, so the test sees the case it guards."""
    import comfy.sample
    import inspect
    node, fixes = _manual_windows_options()
    if fixes == [None]:
        pytest.skip("this host's Context Windows (Manual) node predates causal_window_fix, and its context handler "
                    "looks the step up with every row's timestep (set_step), which fails for an image batch: "
                    "test_host_context_window_equals_the_unwindowed_run drives its handler instead")
    seen = []
    base = world["patcher"].clone()
    base.set_model_attn2_replace(WindowRows(seen), *world["info"]["cross_attn"][0][0])
    prompt, options = _controls(world, control)
    model = _apply(world["ext"], base, world["adapter"], prompt, **options)
    inputs = dict(context_length=4, context_overlap=2, context_schedule="standard_static", context_stride=1,
                  closed_loop=False, fuse_method="pyramid", dim=0, freenoise=False, causal_window_fix=causal_fix)
    takes = inspect.signature(node.execute).parameters  # the node's inputs on this host
    windowed = node.execute(model, **{k: v for k, v in inputs.items() if k in takes})[0]
    noise = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    positive, negative = ([[c, {}]] for c in world["contexts"])

    def sample(m):  # one Euler step to sigma 0: the output is the guided denoised prediction of every frame
        return comfy.sample.sample(m, noise, 1, 5.0, "euler", "normal", positive, negative,
                                   torch.zeros_like(noise), seed=0)
    want = sample(model)
    seen.clear()
    got = sample(windowed)
    anchored = [(rows, frames) for rows, frames, anchor in seen if anchor is not None and anchor >= 0]
    if causal_fix:
        assert anchored and all(rows == len(frames) + 1 for rows, frames in anchored), seen
    else:
        assert seen and not anchored and all(rows == len(frames) for rows, frames, _ in seen), seen
    errors = per_frame_error(got, want)
    assert max(errors) <= TOLERANCE, errors
