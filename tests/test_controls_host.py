"""Issue-5 controls in the real host: each changes the output where, and only where, it should.

Per-layer effects are measured by wrapping every cross-attention layer of a tiny host UNet (real SD1.5 / SDXL
block layouts) with a recorder that compares the layer's output with the plain text attention."""
import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import (CTX, SIGMA, apply_adapter, random_prompt, rel_err, save_and_load, tiny_adapter,
                           tiny_inputs)

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)

# Block sets written out from docs/layers.md#style-and-composition-blocks, independently of ipadapter_core.presets.
SDXL_STYLE = {("output", 1, i) for i in range(10)}
SDXL_COMPOSITION = {("input", 8, i) for i in range(10)}
SD15_STYLE = {("input", b, 0) for b in (1, 2, 4, 5)} | {("output", b, 0) for b in range(5, 12)}
SD15_COMPOSITION = {("input", 8, 0), ("input", 7, 0)}


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def pair(request, host):
    from parity_models import build_pair
    return build_pair(request.param, seed=3, context_dim=CTX)


class Recorder:
    """Wraps one layer's attn2 replacement (or none) and records out - plain text attention, per query position."""

    def __init__(self, patch, log):
        self.patch, self.log = patch, log

    def __call__(self, q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention
        plain = optimized_attention(q, k, v, extra["n_heads"])
        out = plain if self.patch is None else self.patch(q, k, v, extra)
        key = (*extra["block"], extra["block_index"])
        self.log[key] = (out - plain, extra["original_shape"])
        return out


def record(model, info, x, contexts):
    """Run the model once; {layer key: (delta (B, L, inner), original_shape)} for every cross-attention layer."""
    from parity_models import host_eps
    log = {}
    wrapped = model.clone()
    attn2 = wrapped.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, _ in info["cross_attn"]:
        wrapped.set_model_attn2_replace(Recorder(attn2.get(key), log), *key)
    eps = host_eps(wrapped, x, SIGMA, contexts)
    return log, eps


def acting(log):
    return {key for key, (delta, _) in log.items() if delta.abs().max() > 0}


def _adapter(ext, info, tmp_path, kind="base", seed=4):
    sd = tiny_adapter(kind, [w for _, w in info["cross_attn"]], seed)
    return save_and_load(ext, tmp_path, sd, f"{kind}{seed}.safetensors")


_apply = apply_adapter


@pytest.mark.parametrize("preset", ["style transfer", "composition", "style and composition"])
def test_preset_acts_on_exactly_its_layers(ext, pair, tmp_path, preset):
    patcher, _, info = pair
    family = info["layout"]
    style, composition = (SDXL_STYLE, SDXL_COMPOSITION) if family == "sdxl" else (SD15_STYLE, SD15_COMPOSITION)
    expected = {"style transfer": style, "composition": composition, "style and composition": style | composition}
    model = _apply(ext, patcher, _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6), layer_preset=preset)
    x, ctx, _ = tiny_inputs(7)
    log, _ = record(model, info, x, [ctx])
    assert acting(log) == expected[preset]
    attn2 = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(attn2) == expected[preset]  # layers outside the preset are not patched at all


def test_sd15_composition_weights_input_7_at_a_quarter(ext, host, tmp_path):
    from parity_models import build_pair
    patcher, _, info = build_pair("sd15", seed=3, context_dim=CTX)
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    x, ctx, _ = tiny_inputs(7)
    composition, _ = record(_apply(ext, patcher, adapter, prompt, 0.8, layer_preset="composition"), info, x, [ctx])
    alone, _ = record(_apply(ext, patcher, adapter, prompt, 0.8, layer_preset="custom",
                             custom_layer_weights="input 7=1"), info, x, [ctx])
    # input 7 is the first patched layer in both runs, so its inputs are identical: the deltas scale exactly.
    torch.testing.assert_close(composition[("input", 7, 0)][0], 0.25 * alone[("input", 7, 0)][0])


def test_custom_weights_by_number_and_list(ext, pair, tmp_path):
    patcher, _, info = pair
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    keys = [key for key, _ in info["cross_attn"]]  # file order: N = 1, 3, 5, ...
    x, ctx, _ = tiny_inputs(7)
    by_number, _ = record(_apply(ext, patcher, adapter, prompt, layer_preset="custom",
                                 custom_layer_weights="3=1, 5=0.5"), info, x, [ctx])
    assert acting(by_number) == {keys[1], keys[2]}
    listed = ", ".join("1" if i == len(keys) - 1 else "0" for i in range(len(keys)))
    by_list, _ = record(_apply(ext, patcher, adapter, prompt, layer_preset="custom", custom_layer_weights=listed),
                        info, x, [ctx])
    assert acting(by_list) == {keys[-1]}  # the last layer in file order is the middle block
    assert keys[-1][0] == "middle"


def _grid(delta, shape):
    """delta (B, L, D) on a layer whose grid is the latent halved until it has L positions -> (B, h, w, D)."""
    h, w = shape[-2:]
    while h * w != delta.shape[1]:
        h, w = -(-h // 2), -(-w // 2)
    return delta.reshape(delta.shape[0], h, w, -1)


def test_attention_mask_confines_the_branch(ext, pair, tmp_path):
    patcher, _, info = pair
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 5, CTX, generator=g)
    mask = torch.zeros(1, 128, 128)  # pixel space, 8x the latent
    mask[:, :, :64] = 1.0  # left half
    log, _ = record(_apply(ext, patcher, adapter, prompt, attn_mask=mask), info, x, [ctx])
    checked = 0
    for key, (delta, shape) in log.items():
        grid = _grid(delta, shape)
        w = grid.shape[2]
        if w < 2:
            continue
        assert grid[:, :, : w // 2].abs().amax() > 0, key  # acts inside
        assert grid[:, :, w // 2:].abs().amax() == 0, key  # exactly nothing outside
        checked += 1
    assert checked >= len(log) // 2


def test_two_masked_adapters_are_regional_prompts(ext, pair, tmp_path):
    patcher, _, info = pair
    first, second = _adapter(ext, info, tmp_path, seed=4), _adapter(ext, info, tmp_path, "plus", seed=5)
    p1, p2 = random_prompt(ext, 1, 6), random_prompt(ext, 1, 7)
    left = torch.zeros(1, 16, 16)
    left[:, :, :8] = 1.0
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    ctx = tiny_inputs(7)[1]
    both = _apply(ext, _apply(ext, patcher, first, p1, attn_mask=left), second, p2, attn_mask=1 - left)
    log_both, _ = record(both, info, x, [ctx])
    log_first, _ = record(_apply(ext, patcher, first, p1), info, x, [ctx])
    log_second, _ = record(_apply(ext, patcher, second, p2), info, x, [ctx])
    key = info["cross_attn"][0][0]  # the first layer run: its input is the same in all three runs
    shape = log_both[key][1]
    d_both, d_first, d_second = (_grid(log[key][0], shape) for log in (log_both, log_first, log_second))
    half = d_both.shape[2] // 2
    torch.testing.assert_close(d_both[:, :, :half], d_first[:, :, :half], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_both[:, :, half:], d_second[:, :, half:], rtol=1e-5, atol=1e-6)


def test_batch_unfold_gives_frame_i_the_tokens_of_image_i(ext, pair, tmp_path):
    from parity_models import host_eps
    patcher, _, info = pair
    adapter = _adapter(ext, info, tmp_path, "plus", seed=8)
    prompt = random_prompt(ext, 2, 9)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx_c, ctx_u = torch.randn(1, 5, CTX, generator=g), torch.randn(1, 5, CTX, generator=g)
    unfolded = host_eps(_apply(ext, patcher, adapter, prompt, unfold_batch=True), x, SIGMA, [ctx_c, ctx_u])
    core = ext.ipadapter_core
    for i in range(2):
        single = core.ImagePrompt(*(getattr(prompt, f)[i:i + 1] for f in ("embeds", "hidden", "uncond_embeds",
                                                                             "uncond_hidden")))
        alone = host_eps(_apply(ext, patcher, adapter, single), x[i:i + 1], SIGMA, [ctx_c, ctx_u])
        for got, want in zip(unfolded, alone):
            assert rel_err(got[i:i + 1], want) <= 1e-5
    folded = host_eps(_apply(ext, patcher, adapter, prompt), x, SIGMA, [ctx_c, ctx_u])
    assert rel_err(folded[0], unfolded[0]) > 1e-3  # without unfold every frame sees both images


def test_weight_curve_follows_the_schedule(ext, pair, tmp_path):
    patcher, _, info = pair
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    model = _apply(ext, patcher, adapter, prompt, 0.8, 0.2, 0.8, weight_curve="smooth up")
    patch = next(iter(model.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    branch = patch.branches[0]
    sampling = patcher.get_model_object("model_sampling")
    scale = ext.ipadapter_core.attention._scale
    for fraction in (0.0, 0.1, 0.25, 0.4, 0.5, 0.65, 0.79, 0.9):
        sigma = torch.tensor([float(sampling.percent_to_sigma(fraction))])
        if 0.2 <= fraction <= 0.8:
            t = (fraction - 0.2) / 0.6
            want = 0.8 * (3 * t * t - 2 * t ** 3)
        else:
            want = 0.0
        assert float(scale(branch, sigma, torch.float32)) == pytest.approx(want, abs=2e-3), fraction


def test_saved_then_loaded_prompt_gives_bit_identical_output(ext, pair, tmp_path):
    from parity_models import host_eps
    patcher, _, info = pair
    adapter, prompt = _adapter(ext, info, tmp_path, "plus", seed=8), random_prompt(ext, 2, 9)
    core = ext.ipadapter_core
    core.save_image_prompt(tmp_path / "p.safetensors", prompt)
    loaded = core.load_image_prompt(tmp_path / "p.safetensors")
    x, ctx_c, ctx_u = tiny_inputs(3)
    want = host_eps(_apply(ext, patcher, adapter, prompt), x, SIGMA, [ctx_c, ctx_u])
    got = host_eps(_apply(ext, patcher, adapter, loaded), x, SIGMA, [ctx_c, ctx_u])
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_weight_zero_preset_layers_and_empty_custom_leave_model_unpatched(ext, pair, tmp_path):
    patcher, _, info = pair
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    model = _apply(ext, patcher, adapter, prompt, layer_preset="custom", custom_layer_weights="middle=0")
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    with pytest.raises(ext.ipadapter_core.IPAdapterError, match="names no layer"):
        _apply(ext, patcher, adapter, prompt, layer_preset="custom", custom_layer_weights="output 99=1")
