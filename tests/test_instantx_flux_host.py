"""InstantX FLUX.1-dev IP-Adapter in the real host: the patched host Flux against the authors' processor written
out on diffusers' Flux (tests/flux_models.py) with the same weights (tiny widths, the real 19 + 38 blocks, fp32),
and what the controls do."""
import copy

import pytest
import safetensors.torch
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import apply_adapter, random_prompt, rel_err, save_flat_and_load

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


@pytest.fixture(scope="module")
def flux(host):
    import flux_models
    patcher = flux_models.host_flux(seed=1)
    return patcher, flux_models.diffusers_flux(patcher)


_apply = apply_adapter


def _load(ext, tmp_path, sd, name="instantx.safetensors"):
    return save_flat_and_load(ext, tmp_path, sd, name)


def _run(patcher, seed=3):
    import flux_models as fm
    return fm.velocity_pair(patcher, seed)


def _reference(twin, adapters, seed=3):
    """diffusers' velocity for cond and uncond with the reference processors; ``adapters``: [(sd, scale,
    prompt)]: cond rows read each prompt's embeds, uncond rows its uncond embeds."""
    import flux_models as fm
    x, ctx_c, ctx_u, y_c, y_u = fm.inputs(seed)
    out = []
    for ctx, y, field in ((ctx_c, y_c, "embeds"), (ctx_u, y_u, "uncond_embeds")):
        entries = [(sd, scale, fm.instantx_tokens(sd, getattr(prompt, field))) for sd, scale, prompt in adapters]
        model = fm.diffusers_instantx(copy.deepcopy(twin), entries)
        out.append(fm.diffusers_velocity(model, x, fm.SIGMA, ctx, y))
    return out


@pytest.mark.parametrize("tokens,images", [(6, 1), (4, 2)])
def test_patched_host_flux_equals_the_authors_processor(ext, flux, tmp_path, tokens, images):
    import flux_models as fm
    patcher, twin = flux
    sd = fm.instantx_adapter(5, tokens=tokens)
    prompt = random_prompt(ext, images, seed=7)
    adapter = _load(ext, tmp_path, sd)
    assert adapter.spec.kind == "instantx_flux" and adapter.spec.tokens == tokens
    cond, uncond = _run(_apply(ext, patcher, adapter, prompt, 0.8))
    ref_cond, ref_uncond = _reference(twin, [(sd, 0.8, prompt)])
    assert rel_err(cond, ref_cond) <= 1e-4
    assert rel_err(uncond, ref_uncond) <= 1e-4
    plain = _run(patcher)
    assert rel_err(cond, plain[0]) > 1e-3 and rel_err(uncond, plain[1]) > 1e-3  # the image prompt acts


def test_two_stacked_adapters_equal_the_reference_with_both(ext, flux, tmp_path):
    import flux_models as fm
    patcher, twin = flux
    sd_a, sd_b = fm.instantx_adapter(11, tokens=4), fm.instantx_adapter(12, tokens=6)
    p_a, p_b = random_prompt(ext, 1, 21), random_prompt(ext, 1, 22)
    model = _apply(ext, patcher, _load(ext, tmp_path, sd_a, "a.safetensors"), p_a, 0.6)
    model = _apply(ext, model, _load(ext, tmp_path, sd_b, "b.safetensors"), p_b, 1.3)
    cond, uncond = _run(model)
    ref_cond, ref_uncond = _reference(twin, [(sd_a, 0.6, p_a), (sd_b, 1.3, p_b)])
    assert rel_err(cond, ref_cond) <= 1e-4 and rel_err(uncond, ref_uncond) <= 1e-4


def test_with_an_xlabs_adapter_on_the_same_double_blocks(ext, flux, tmp_path):
    """An XLabs and an InstantX adapter on one model: each block's patch keeps the other's (nested), and the
    result equals applying them in the other order (the two terms add independently within a block)."""
    import flux_models as fm
    patcher, _ = flux
    xlabs = _load(ext, tmp_path, fm.xlabs_adapter(3, tokens=4), "x.safetensors")
    instantx = _load(ext, tmp_path, fm.instantx_adapter(4), "i.safetensors")
    p_x, p_i = random_prompt(ext, 1, 31), random_prompt(ext, 1, 32)
    one = _apply(ext, _apply(ext, patcher, xlabs, p_x, 0.7), instantx, p_i, 0.9)
    dit = one.model_options["transformer_options"]["patches_replace"]["dit"]
    assert type(dit[("double_block", 0)].inner).__name__ == "DiTBlockPatch"
    assert type(dit[("single_block", 0)]).__name__ == "InstantXFluxPatch"
    alone = _run(_apply(ext, patcher, instantx, p_i, 0.9))
    both = _run(one)
    other_order = _run(_apply(ext, _apply(ext, patcher, instantx, p_i, 0.9), xlabs, p_x, 0.7))
    assert all(torch.equal(a, b) for a, b in zip(both, other_order))
    assert rel_err(both[0], alone[0]) > 1e-3  # the XLabs term is there too
    assert rel_err(both[0], _run(_apply(ext, patcher, xlabs, p_x, 0.7))[0]) > 1e-3


def test_weight_zero_and_steps_outside_the_range_are_bit_identical(ext, flux, tmp_path):
    import flux_models as fm
    patcher, _ = flux
    adapter = _load(ext, tmp_path, fm.instantx_adapter(4))
    prompt = random_prompt(ext, 1, 6)
    plain = _run(patcher)
    for weight, start, end in [(0.0, 0.0, 1.0), (1.0, 0.9, 1.0), (1.0, 0.0, 0.1), (1.0, 0.5, 0.5)]:
        out = _run(_apply(ext, patcher, adapter, prompt, weight, start, end))
        assert all(torch.equal(a, b) for a, b in zip(out, plain)), (weight, start, end)
    inside = _run(_apply(ext, patcher, adapter, prompt, 1.0, 0.1, 0.9))
    assert not torch.equal(inside[0], plain[0])


def _fresh(args):
    """A copy of a block's args with its own tensors (the host's blocks add to ``txt`` / ``x`` in place)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


class _Capture:
    """Outermost ``dit`` patch: records the args each block is first called with, then runs what it wraps."""

    def __init__(self, wrapped, log, key):
        self.wrapped, self.log, self.key = wrapped, log, key

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        self.log.setdefault(self.key, _fresh(args))
        return self.wrapped(args, extra)


def _block_call(block, double):
    """The host's own call of a block from a patch's args (as ``forward_orig``'s ``block_wrap``)."""
    def call(args):
        options = args.get("transformer_options")
        if double:
            img, txt = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                             attn_mask=args.get("attn_mask"), transformer_options=options)
            return {"img": img, "txt": txt}
        return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                             transformer_options=options)}
    return call


def test_mask_confines_each_block_term_to_the_masked_image_tokens(ext, flux, tmp_path):
    """Every one of the 57 blocks, run on the inputs it gets in a masked run: with the patch its output differs
    from the plain block's only at the masked image tokens (text tokens and the rest of the image untouched; the
    model's output still changes outside, through the next blocks' joint attention)."""
    import flux_models as fm
    patcher, _ = flux
    mask = torch.zeros(1, 64, 64)  # pixel space: 8x the 8x8 latent, 32x the 2x2-patch token grid (4x4)
    mask[:, :, :32] = 1.0  # left half
    patched = _apply(ext, patcher, _load(ext, tmp_path, fm.instantx_adapter(4)), random_prompt(ext, 1, 6),
                     attn_mask=mask)
    dit = dict(patched.model_options["transformer_options"]["patches_replace"]["dit"])
    assert len(dit) == 57
    log = {}
    for key, patch in dit.items():
        patched.set_model_patch_replace(_Capture(patch, log, key), "dit", *key)
    _run(patched)
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    left = left.flatten()  # (L,) image tokens in row-major (h w) order
    net = patcher.get_model_object("diffusion_model")
    for (kind, i), args in log.items():
        double = kind == "double_block"
        block = (net.double_blocks if double else net.single_blocks)[i]
        call = _block_call(block, double)
        with torch.no_grad():
            plain, ours = call(_fresh(args)), dit[(kind, i)](_fresh(args), {"original_block": call})
        image_delta = (ours["img"] - plain["img"]) if double else (ours["img"] - plain["img"])[:, 5:]  # 5 text
        assert torch.equal(image_delta[:, ~left], torch.zeros_like(image_delta[:, ~left])), (kind, i)
        assert image_delta[:, left].abs().amax(dim=-1).gt(0).all(), (kind, i)
        text = ours["txt"] - plain["txt"] if double else (ours["img"] - plain["img"])[:, :5]
        assert torch.equal(text, torch.zeros_like(text)), (kind, i)


def test_all_57_blocks_hooked_forward_untouched_and_custom_weights(ext, flux, tmp_path):
    import comfy.ldm.flux.model
    import flux_models as fm
    patcher, _ = flux
    adapter = _load(ext, tmp_path, fm.instantx_adapter(4))
    patched = _apply(ext, patcher, adapter, random_prompt(ext, 1, 6))
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", i) for i in range(19)} | {("single_block", i) for i in range(38)}
    net = patched.get_model_object("diffusion_model")
    assert "forward" not in vars(net) and type(net).forward is comfy.ldm.flux.model.Flux.forward
    assert "patches_replace" not in patcher.model_options.get("transformer_options", {})
    named = _apply(ext, patcher, adapter, random_prompt(ext, 1, 6), 2.0, layer_preset="custom",
                   custom_layer_weights="double 3=0.5, single 37=1")
    dit = named.model_options["transformer_options"]["patches_replace"]["dit"]
    assert {k: p.branches[0].weight for k, p in dit.items()} == {("double_block", 3): 1.0, ("single_block", 37): 2.0}
    listed = _apply(ext, patcher, adapter, random_prompt(ext, 1, 6), 1.0, layer_preset="custom",
                    custom_layer_weights=", ".join(["0"] * 56 + ["0.5"]))
    assert set(listed.model_options["transformer_options"]["patches_replace"]["dit"]) == {("single_block", 37)}


def test_unrotate_inverts_the_hosts_rope(host):
    import comfy.ldm.flux.layers
    import comfy.ldm.flux.math
    from ipadapter_suite.ipadapter_core.dit_attention import unrotate
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (2, 9, 3), generator=g).float()
    pe = comfy.ldm.flux.layers.EmbedND(dim=16, theta=10000, axes_dim=[4, 6, 6])(ids)  # (B, 1, L, d/2, 2, 2)
    q = torch.randn(2, 3, 9, 16, generator=g)
    rotated = comfy.ldm.flux.math.apply_rope1(q, pe)
    assert rel_err(rotated, q) > 0.1
    assert rel_err(unrotate(rotated, pe), q) <= 1e-6
    assert unrotate(q, None) is q


def test_wrong_pairings_are_refused_by_name(ext, flux, tmp_path):
    import flux_models as fm
    from parity_models import host_model
    patcher, _ = flux
    errors = ext.ipadapter_core
    adapter = _load(ext, tmp_path, fm.instantx_adapter(4))
    with pytest.raises(errors.ModelMismatchError, match="for Flux models; this model is a UNetModel"):
        _apply(ext, host_model("sd15", 32, 32), adapter, random_prompt(ext, 1, 6))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 9, fm.EMBED, generator=g)  # an encoder's token states, not a pooled vector
    unpooled = ext.ipadapter_core.ImagePrompt(tokens, tokens, torch.zeros_like(tokens), tokens)
    with pytest.raises(errors.EncoderMismatchError, match="pooling head"):
        _apply(ext, patcher, adapter, unpooled)
    wrong_width = ext.ipadapter_core.with_default_uncond(torch.randn(1, 16), torch.randn(1, 9, 16),
                                                         torch.randn(1, 9, 16))
    with pytest.raises(errors.EncoderMismatchError, match="width 24"):
        _apply(ext, patcher, adapter, wrong_width)
    with pytest.raises(errors.InputError, match="unfold_batch and frame_weights are for SD1.5/SDXL"):
        _apply(ext, patcher, adapter, random_prompt(ext, 2, 6), unfold_batch=True)


def test_the_published_torch_file_layout_loads(ext, flux, tmp_path):
    """The authors publish ``ip-adapter.bin``: a torch file {"image_proj": {...}, "ip_adapter": {...}}; it loads
    (weights only) to the same adapter as the flattened safetensors file."""
    import flux_models as fm
    patcher, _ = flux
    sd = fm.instantx_adapter(8)
    nested = {"image_proj": {}, "ip_adapter": {}}
    for key, value in sd.items():
        part, _, rest = key.partition(".")
        nested[part][rest] = value
    torch.save(nested, str(tmp_path / "ip-adapter.bin"))
    from_bin = ext.host.files.load_adapter(str(tmp_path / "ip-adapter.bin"))
    assert from_bin.spec == _load(ext, tmp_path, sd).spec
    prompt = random_prompt(ext, 1, 6)
    a, b = _run(_apply(ext, patcher, from_bin, prompt)), _run(_apply(ext, patcher, _load(ext, tmp_path, sd), prompt))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_siglip_with_its_head_from_the_host_loader_feeds_the_adapter(ext, flux, tmp_path):
    """A SigLIP encoder of the host's kind (tiny config) whose file, with the pooling head, is in a clip_vision
    folder: Encode Image Prompt gives the pooled embedding, which drives the adapter on the host Flux. Without the
    head file the same graph is refused before sampling, naming the file to get."""
    import folder_paths
    import flux_models as fm
    from test_siglip_head import WIDTH, _head_state, _host_siglip
    folder = tmp_path / "clip_vision"
    folder.mkdir()
    siglip, tower = _host_siglip(tmp_path, seed=3)
    folder_paths.add_model_folder_path("clip_vision", str(folder))
    try:
        adapter = _load(ext, tmp_path, fm.instantx_adapter(9, embed=WIDTH))
        image = torch.rand(1, 50, 40, 3, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            unpooled = ext.host.vision.encode_image_prompt(siglip, image, fit="squash")
        with pytest.raises(ext.ipadapter_core.EncoderMismatchError, match="no pooling head.*model.safetensors"):
            _apply(ext, flux[0], adapter, unpooled)
        safetensors.torch.save_file({**tower, **_head_state(4)}, str(folder / "siglip.safetensors"))
        with torch.inference_mode():
            prompt = ext.host.vision.encode_image_prompt(siglip, image, fit="squash")
    finally:
        folder_paths.folder_names_and_paths["clip_vision"][0].remove(str(folder))
    assert prompt.embeds.shape == (1, WIDTH) and torch.equal(prompt.uncond_embeds, torch.zeros(1, WIDTH))
    patcher, _ = flux
    cond, uncond = _run(_apply(ext, patcher, adapter, prompt, 1.0))
    plain = _run(patcher)
    assert torch.isfinite(cond).all() and rel_err(cond, plain[0]) > 1e-3 and rel_err(uncond, plain[1]) > 1e-3


def test_a_block_that_puts_the_image_first_gets_the_term_on_its_image_tokens(host):
    """A double block with ``flipped_img_txt`` (image tokens first in its joint attention) patched with
    ``img_first`` equals the usual block on the same tokens in the usual order (the attention is the same up to the
    order of its tokens and their RoPE angles)."""
    import inspect

    import comfy.ops
    from comfy.ldm.flux.layers import DoubleStreamBlock, EmbedND
    import flux_models as fm
    from ipadapter_suite.ipadapter_core.attention import Branch
    from ipadapter_suite.ipadapter_core.dit_attention import InstantXFluxPatch
    if "flipped_img_txt" not in inspect.signature(DoubleStreamBlock).parameters:
        pytest.skip("this host's Flux double blocks always put the text tokens first (no flipped_img_txt)")
    g = torch.Generator().manual_seed(0)
    blocks = [DoubleStreamBlock(32, 2, 4.0, qkv_bias=True, flipped_img_txt=f, operations=comfy.ops.disable_weight_init)
              for f in (False, True)]
    fm.randomize(blocks[0], 3)
    blocks[1].load_state_dict(blocks[0].state_dict())
    ids = torch.randint(0, 9, (1, 5 + 16, 3), generator=g).float()
    pe = EmbedND(dim=16, theta=10000, axes_dim=[4, 6, 6])(ids)  # (1, 1, 21, 8, 2, 2): text first
    pe_flipped = torch.cat([pe[:, :, 5:], pe[:, :, :5]], dim=2)
    img, txt, vec = torch.randn(1, 16, 32, generator=g), torch.randn(1, 5, 32, generator=g), torch.randn(1, 32)
    kv = [torch.randn(1, 6, 32, generator=g) for _ in range(4)]
    outs = []
    for block, first, rotation in zip(blocks, (False, True), (pe, pe_flipped)):
        patch = InstantXFluxPatch((Branch(*kv, weight=0.7),), double=True, heads=2, img_first=first)
        args = {"img": img, "txt": txt.clone(), "vec": vec, "pe": rotation, "transformer_options": {}}

        def call(a, block=block):
            out = block(img=a["img"], txt=a["txt"], vec=a["vec"], pe=a["pe"],
                        transformer_options=a["transformer_options"])
            return dict(zip(("img", "txt"), out))
        with torch.no_grad():
            outs.append((patch(args, {"original_block": call}), call({**args, "txt": txt.clone()})))
    (usual, usual_plain), (flipped, flipped_plain) = outs
    assert rel_err(flipped_plain["img"], usual_plain["img"]) <= 1e-5  # the two blocks agree unpatched
    assert rel_err(flipped["img"], usual["img"]) <= 1e-5 and rel_err(flipped["txt"], usual["txt"]) <= 1e-5
    assert rel_err(usual["img"], usual_plain["img"]) > 1e-3


def test_in_bf16_the_turned_back_query_costs_about_one_rounding(host):
    """In bf16 the host rounds the rotated q to the model's dtype before the override sees it: the query turned
    back from it differs from the fp32 query by about what the block's own bf16 query does (one more rounding),
    not more (docs/inference.md#instantx-flux)."""
    import comfy.ops
    from comfy.ldm.flux.layers import DoubleStreamBlock, EmbedND
    from comfy.ldm.flux.math import apply_rope1
    import flux_models as fm
    from ipadapter_suite.ipadapter_core.dit_attention import flux_image_query, unrotate
    g = torch.Generator().manual_seed(1)
    block = DoubleStreamBlock(256, 2, 4.0, qkv_bias=True, operations=comfy.ops.disable_weight_init)
    fm.randomize(block, 4)
    img, vec = torch.randn(2, 64, 256, generator=g), torch.randn(2, 256, generator=g)
    pe = EmbedND(dim=128, theta=10000, axes_dim=[16, 56, 56])(torch.randint(0, 32, (2, 64, 3), generator=g).float())
    exact32 = flux_image_query(block, img, vec)  # (B, h, L, d), before RoPE
    half = block.to(torch.bfloat16)
    with torch.no_grad():
        exact16 = flux_image_query(half, img.bfloat16(), vec.bfloat16())
        turned_back = unrotate(apply_rope1(exact16, pe), pe)  # what the override recovers in bf16
    own, ours = rel_err(exact16.float(), exact32), rel_err(turned_back.float(), exact32)
    assert 0 < own < 2 ** -5 and ours <= 3 * own, (own, ours)
