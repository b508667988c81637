"""Behaviours a mutation audit found unguarded, each checked against an expected value computed here, never by the
code under test:

- attention masks on non-square latents (8x12, H != W) for the UNet, XLabs Flux and InstantX SD3.5 paths: which
  query positions of each layer / block get the image term, against the grid written out here (token index =
  row * w + col of the mask resized to that layer's h x w);
- ``start_at`` / ``end_at``: the branch is on at the sigma of each end point exactly and off one float step outside
  it (``sigma_end <= sigma <= sigma_start``, the reference's and the incumbent's convention; README "Outside
  [start_at, end_at]");
- Encode Image Prompt's features for plus and full-face adapters are the encoder's penultimate hidden states
  (``hidden_states[-2]``), and its default negative is the reference's (tencent-ailab ``IPAdapterPlus``:
  ``image_encoder(torch.zeros_like(clip_image)).hidden_states[-2]``, zeros in the *normalised* pixel space; zero
  embeddings for base adapters), both computed with transformers' ``CLIPVisionModelWithProjection`` holding the
  host encoder's weights.
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import CTX, EMBED, HIDDEN, apply_adapter, random_prompt, save_and_load, tiny_adapter

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)

LATENT = (8, 12)  # H != W: a transposed grid cannot pass
PIXELS = (64, 96)  # the mask in pixel space, 8x the latent
# The grids of the latent's layers, written out: UNet layers halve the sides rounding up (8x12, 4x6, 2x3, 1x2);
# the DiTs see 2x2 patches (4x6).
UNET_GRIDS = {96: (8, 12), 24: (4, 6), 6: (2, 3), 2: (1, 2)}
DIT_GRID = (4, 6)


def _pixel_mask(region: str) -> torch.Tensor:
    """(1, 64, 96): 1 on the left half or the top half, 0 elsewhere."""
    mask = torch.zeros(1, *PIXELS)
    if region == "left":
        mask[:, :, : PIXELS[1] // 2] = 1.0
    else:
        mask[:, : PIXELS[0] // 2, :] = 1.0
    return mask


def _expected_tokens(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(h*w,) the mask resized (bilinear) to an h x w grid, token ``row * w + col`` = grid[row, col]."""
    grid = F.interpolate(mask[:, None], size=(h, w), mode="bilinear")[0, 0]
    flat = torch.empty(h * w)
    for row in range(h):
        for col in range(w):
            flat[row * w + col] = grid[row, col]
    return flat


def _check_confined(delta: torch.Tensor, expected: torch.Tensor, where):
    """delta (B, L, D): exactly zero at the tokens the mask gives 0, nonzero at every other token."""
    inside = expected > 0
    assert inside.any() and (~inside).any(), where  # both sides of the mask's edge are present on this grid
    assert torch.equal(delta[:, ~inside], torch.zeros_like(delta[:, ~inside])), where
    assert delta[:, inside].abs().amax(dim=-1).gt(0).all(), where


# ---------------------------------------------------------------------------------------------------- UNet masks

@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def unet(request, host):
    from parity_models import build_pair
    patcher, _, info = build_pair(request.param, seed=3, context_dim=CTX)
    return patcher, info


class _Recorder:
    """Wraps one layer's attn2 replacement (or none) and records out - plain text attention, per query position."""

    def __init__(self, patch, log):
        self.patch, self.log = patch, log

    def __call__(self, q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention
        plain = optimized_attention(q, k, v, extra["n_heads"])
        out = plain if self.patch is None else self.patch(q, k, v, extra)
        self.log[(*extra["block"], extra["block_index"])] = out - plain
        return out


def _record_unet(model, info, x, contexts, sigma):
    """{layer key: delta (B, L, inner)} of one run of the model at ``sigma``, and the model's outputs."""
    from parity_models import host_eps
    log = {}
    wrapped = model.clone()
    attn2 = wrapped.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, _ in info["cross_attn"]:
        wrapped.set_model_attn2_replace(_Recorder(attn2.get(key), log), *key)
    return log, host_eps(wrapped, x, sigma, contexts)


def _adapter(ext, info, tmp_path, kind="base", seed=4):
    sd = tiny_adapter(kind, [w for _, w in info["cross_attn"]], seed)
    return save_and_load(ext, tmp_path, sd, f"{kind}{seed}.safetensors")


@pytest.mark.parametrize("region", ["left", "top"])
def test_unet_mask_on_a_non_square_latent_acts_on_the_right_positions(ext, unet, tmp_path, region):
    """On an 8x12 latent, every cross-attention layer's image term is zero exactly where the mask resized to that
    layer's grid (8x12, 4x6, 2x3, 1x2) is 0, in row-major (h w) order; and on the first layer run (same input with
    and without the mask) it is the unmasked term times the resized mask, value for value."""
    from tiny_adapters import SIGMA
    patcher, info = unet
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, *LATENT, generator=g)
    contexts = [torch.randn(1, 5, CTX, generator=g), torch.randn(1, 5, CTX, generator=g)]
    mask = _pixel_mask(region)
    masked, _ = _record_unet(apply_adapter(ext, patcher, adapter, prompt, attn_mask=mask), info, x, contexts, SIGMA)
    grids = set()
    for key, delta in masked.items():
        h, w = UNET_GRIDS[delta.shape[1]]
        expected = _expected_tokens(mask, h, w)
        if (expected > 0).all():  # a 1-row grid of a top-half mask: 0.5 everywhere, nothing to tell apart
            assert delta.abs().amax(dim=-1).gt(0).all(), key
            continue
        _check_confined(delta, expected, key)
        grids.add((h, w))
    assert grids >= ({(8, 12)} if info["layout"] == "sd15" else set()) | {(4, 6), (2, 3)}  # SDXL: none at 8x12
    first = info["cross_attn"][0][0]
    plain, _ = _record_unet(apply_adapter(ext, patcher, adapter, prompt), info, x, contexts, SIGMA)
    h, w = UNET_GRIDS[plain[first].shape[1]]
    want = plain[first] * _expected_tokens(mask, h, w)[None, :, None]
    torch.testing.assert_close(masked[first], want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- DiT masks

class _BlockRecorder:
    """A foreign ``dit`` patch: runs what it wraps (or the block) and records its image tokens."""

    def __init__(self, wrapped, log, name):
        self.wrapped, self.log, self.name = wrapped, log, name

    def __deepcopy__(self, memo):  # the host's clone copies model_options: keep one log
        return self

    def __call__(self, args, extra):
        out = self.wrapped(args, extra) if self.wrapped is not None else extra["original_block"](args)
        self.log[self.name] = out["img"].clone()
        return out


@pytest.mark.parametrize("region", ["left", "top"])
def test_flux_mask_on_a_non_square_latent_acts_on_the_right_tokens(ext, host, tmp_path, region):
    """XLabs Flux on an 8x12 latent (a 4x6 grid of 2x2 patches): each double block's image term (the block's
    output with the adapter minus the same block's output without it, same input) is zero exactly at the tokens
    row * 6 + col where the mask resized to 4x6 is 0, and acts at every other token."""
    import flux_models as fm
    from tiny_adapters import save_flat_and_load
    patcher = fm.host_flux(seed=1)
    log = {}
    inner = patcher.clone()
    for i in range(19):
        inner.set_model_patch_replace(_BlockRecorder(None, log, ("inner", i)), "dit", "double_block", i)
    mask = _pixel_mask(region)
    adapter = save_flat_and_load(ext, tmp_path, fm.xlabs_adapter(4), "a.safetensors")
    patched = apply_adapter(ext, inner, adapter, random_prompt(ext, 1, 6), attn_mask=mask)
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    for i in range(19):
        patched.set_model_patch_replace(_BlockRecorder(dit[("double_block", i)], log, ("outer", i)), "dit",
                                        "double_block", i)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, *LATENT, generator=g)
    conds = [(torch.randn(1, 5, fm.CONTEXT, generator=g), torch.randn(1, fm.VEC, generator=g)) for _ in range(2)]
    fm.host_velocity(patched, x, fm.SIGMA, conds)
    expected = _expected_tokens(mask, *DIT_GRID)
    for i in range(19):
        delta = log[("outer", i)] - log[("inner", i)]  # (B, L, H)
        assert delta.shape[1] == DIT_GRID[0] * DIT_GRID[1], i
        _check_confined(delta, expected, i)


class _SD3Reference:
    """A foreign ``dit`` patch on an MMDiT block: runs the block as given and without the attention override the
    IP-Adapter put in its options, and records the difference of the image stream."""

    def __init__(self, log, index):
        self.log, self.index = log, index

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        out = extra["original_block"](args)
        options = {k: v for k, v in args["transformer_options"].items() if k != "optimized_attention_override"}
        plain = extra["original_block"]({**args, "transformer_options": options})
        self.log[self.index] = out["img"] - plain["img"]
        return out


@pytest.mark.parametrize("region", ["left", "top"])
def test_sd35_mask_on_a_non_square_latent_acts_on_the_right_tokens(ext, host, tmp_path, region):
    """InstantX SD3.5 on an 8x12 latent (4x6 patches): each joint block's image term is zero exactly at the tokens
    row * 6 + col where the mask resized to 4x6 is 0, and acts at every other token."""
    import flux_models as fm
    import safetensors.torch
    import sd3_models as sm
    patcher = sm.host_sd3(seed=1)
    log = {}
    inner = patcher.clone()
    for i in range(sm.BLOCKS):
        inner.set_model_patch_replace(_SD3Reference(log, i), "dit", "double_block", i)
    sd = sm.instantx_adapter(4)
    path = tmp_path / "ip-adapter.safetensors"
    safetensors.torch.save_file({f"{part}.{k}": v for part in sd for k, v in sd[part].items()}, str(path))
    mask = _pixel_mask(region)
    patched = apply_adapter(ext, inner, ext.host.files.load_adapter(str(path)), random_prompt(ext, 1, 6),
                            attn_mask=mask)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, *LATENT, generator=g)
    conds = [(torch.randn(1, 5, sm.CONTEXT, generator=g), torch.randn(1, sm.POOLED, generator=g)) for _ in range(2)]
    fm.host_velocity(patched, x, sm.SIGMA, conds)
    expected = _expected_tokens(mask, *DIT_GRID)
    assert sorted(log) == list(range(sm.BLOCKS))
    for i, delta in log.items():
        assert delta.shape[1] == DIT_GRID[0] * DIT_GRID[1], i
        _check_confined(delta, expected, i)


# ---------------------------------------------------------------------------------------------- start_at / end_at

@pytest.mark.parametrize("embeds_scaling", ["V only", "K+V"])
def test_start_and_end_sigmas_are_inside_the_range_and_one_step_out_is_not(ext, host, tmp_path, embeds_scaling):
    """start_at 0.3, end_at 0.7 on SD1.5: at sigma = percent_to_sigma(0.3) and = percent_to_sigma(0.7) exactly the
    image branch acts; one float32 step above the start sigma and one below the end sigma the output is the
    unpatched model's, bit for bit. (The host hands the model float32 sigmas, and percent_to_sigma's values are
    float32 numbers.)"""
    from parity_models import build_pair, host_eps
    patcher, _, info = build_pair("sd15", seed=3, context_dim=CTX)
    adapter, prompt = _adapter(ext, info, tmp_path), random_prompt(ext, 1, 6)
    model = apply_adapter(ext, patcher, adapter, prompt, 0.9, 0.3, 0.7, embeds_scaling=embeds_scaling)
    sampling = patcher.get_model_object("model_sampling")
    start = torch.tensor(float(sampling.percent_to_sigma(0.3)), dtype=torch.float32)
    end = torch.tensor(float(sampling.percent_to_sigma(0.7)), dtype=torch.float32)
    assert float(start) == float(sampling.percent_to_sigma(0.3))  # exactly a float32 number
    assert end < start
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, *LATENT, generator=g)
    contexts = [torch.randn(1, 5, CTX, generator=g), torch.randn(1, 5, CTX, generator=g)]
    cases = {"start": (start, True), "above start": (torch.nextafter(start, torch.tensor(float("inf"))), False),
             "end": (end, True), "below end": (torch.nextafter(end, torch.tensor(0.0)), False),
             "middle": ((start + end) / 2, True)}
    for name, (sigma, on) in cases.items():
        plain = host_eps(patcher, x, sigma, contexts)
        patched = host_eps(model, x, sigma, contexts)
        same = all(torch.equal(a, b) for a, b in zip(patched, plain))
        assert same != on, (name, float(sigma))


# ---------------------------------------------------------------------------------------------- encoder features

ENCODER = dict(hidden_size=HIDDEN, projection_dim=EMBED)  # the tiny adapters' widths (tiny_adapters.py)


@pytest.fixture(scope="module")
def encoders(host, tmp_path_factory):
    """The host's tiny CLIP vision model and transformers' CLIPVisionModelWithProjection with the same weights."""
    import transformers
    from host_models import TINY_CLIP_VISION, tiny_clip_vision
    clip_vision = tiny_clip_vision(tmp_path_factory.mktemp("clip"), seed=2, **ENCODER)
    config = transformers.CLIPVisionConfig(**{k: v for k, v in {**TINY_CLIP_VISION, **ENCODER}.items()
                                              if k != "model_type"})
    twin = transformers.CLIPVisionModelWithProjection(config).float().eval()
    state = {k: v.float() for k, v in clip_vision.get_sd().items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return clip_vision, twin


def _normalised(clip_vision, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE (n, S, S, 3) at the encoder's size -> CLIP-normalised (n, 3, S, S), as CLIPImageProcessor does."""
    mean = torch.tensor(clip_vision.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(clip_vision.image_std).view(1, 3, 1, 1)
    return (pixels.movedim(-1, 1) - mean) / std


def _twin_hidden(twin, pixel_values, layer=-2):
    with torch.no_grad():
        return twin(pixel_values=pixel_values, output_hidden_states=True).hidden_states[layer]


def _wide_images(n=2, seed=0):
    """(n, 28, 40, 3) in steps of 1/255 (the host's pixel quantisation leaves them as they are); ``top/left crop``
    keeps the first 28 columns, which reach the encoder at its own size (no resize)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 40, 3), generator=g).float() / 255.0


def test_plus_prompt_tokens_come_from_the_penultimate_hidden_states(ext, encoders, tmp_path):
    """Encode Image Prompt's hidden features are transformers' ``hidden_states[-2]`` for the same pixels (not the
    last layer), and a plus adapter's cond tokens are its projection of exactly those."""
    clip_vision, twin = encoders
    images = _wide_images()
    prompt = ext.host.vision.encode_image_prompt(clip_vision, images, fit="top/left crop")
    pixels = _normalised(clip_vision, images[:, :, :28])
    penultimate, last = _twin_hidden(twin, pixels, -2), _twin_hidden(twin, pixels, -1)
    assert (penultimate - last).abs().amax() > 1e-2  # the two layers differ: the test can tell them apart
    torch.testing.assert_close(prompt.hidden, penultimate, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        pooled = twin(pixel_values=pixels).image_embeds
    torch.testing.assert_close(prompt.embeds, pooled, rtol=1e-4, atol=1e-5)
    plus = save_and_load(ext, tmp_path, tiny_adapter("plus", [CTX] * 16, 5), "plus.safetensors")
    tokens, _ = ext.ipadapter_core.attention.prompt_tokens(plus.model, prompt, unfold=True)  # (2 + 1, N, C)
    with torch.no_grad():
        want = plus.model.image_proj(penultimate)
    torch.testing.assert_close(tokens[:2], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["plus", "full_face", "base"])
def test_default_negative_is_the_reference_s(ext, encoders, tmp_path, kind):
    """The default negative, computed independently: plus and full-face read transformers' ``hidden_states[-2]``
    of an all-zero *normalised* pixel tensor (the reference's ``torch.zeros_like(clip_image)``, i.e. mean grey,
    not black), base adapters a zero embedding; the adapter's uncond tokens are its projection of those."""
    clip_vision, twin = encoders
    images = _wide_images(seed=1)
    prompt = ext.host.vision.encode_image_prompt(clip_vision, images, fit="top/left crop")
    size = clip_vision.image_size
    zero_pixels = torch.zeros(1, 3, size, size)
    mean_grey = _twin_hidden(twin, zero_pixels)
    black = _twin_hidden(twin, _normalised(clip_vision, torch.zeros(1, size, size, 3)))
    assert (mean_grey - black).abs().amax() > 1e-2  # black and mean grey differ: the test can tell them apart
    adapter = save_and_load(ext, tmp_path, tiny_adapter(kind, [CTX] * 16, 5), f"{kind}.safetensors")
    tokens, cond_sets = ext.ipadapter_core.attention.prompt_tokens(adapter.model, prompt, unfold=True)
    assert cond_sets == 2 and tokens.shape[0] == 3  # one uncond set, shared by both images
    if kind == "base":
        torch.testing.assert_close(prompt.uncond_embeds, torch.zeros(2, EMBED))
        features = torch.zeros(1, EMBED)
    else:
        torch.testing.assert_close(prompt.uncond_hidden, mean_grey.expand(2, -1, -1), rtol=1e-4, atol=1e-5)
        features = mean_grey
    with torch.no_grad():
        want = adapter.model.image_proj(features)
    torch.testing.assert_close(tokens[2:], want, rtol=1e-4, atol=1e-5)
