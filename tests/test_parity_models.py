"""Checks of the parity reference itself (tests/parity_models.py): host and diffusers agree without an IP-Adapter,
the cross-attention keys are those the host visits, and diffusers' IP-Adapter loader takes a hand-made file."""
import copy
import importlib

import pytest
import torch

EXPECTED_LAYERS = {"sd15": 16, "sdxl": 70}
SIGMA = 1.7
TOKENS = 6


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def pm(host):
    return importlib.import_module("parity_models")


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def pair(request, pm):
    patcher, unet, info = pm.build_pair(request.param, seed=0, context_dim=32)
    gen = torch.Generator().manual_seed(123)
    x = torch.randn((1, info["in_channels"], 8, 8), generator=gen) * (SIGMA ** 2 + 1) ** 0.5
    cond = torch.randn((1, TOKENS, info["context_dim"]), generator=gen)
    uncond = torch.randn((1, TOKENS, info["context_dim"]), generator=gen)
    return dict(patcher=patcher, unet=unet, info=info, x=x, cond=cond, uncond=uncond,
                host=pm.host_eps(patcher, x, SIGMA, [cond, uncond]),
                diffusers=[pm.diffusers_eps(unet, patcher, x, SIGMA, c) for c in (cond, uncond)])


def test_plain_host_matches_diffusers(pair):
    host, ref = pair["host"], pair["diffusers"]
    errors = [rel_err(h, d) for h, d in zip(host, ref)]
    print(f"{pair['info']['layout']}: rel err cond {errors[0]:.2e}, uncond {errors[1]:.2e}")
    assert all(e <= 1e-5 for e in errors), errors
    # Non-trivial: the two contexts give clearly different predictions.
    assert rel_err(ref[0], ref[1]) > 1e-2


def test_cross_attention_keys_are_the_ones_the_host_visits(pair, pm):
    from comfy.ldm.modules.attention import optimized_attention

    info = pair["info"]
    keys = [key for key, _ in info["cross_attn"]]
    assert len(keys) == EXPECTED_LAYERS[info["layout"]]
    assert len(set(keys)) == len(keys)
    assert info["ip_numbers"] == list(range(1, 2 * len(keys), 2))

    calls = []
    patched = pair["patcher"].clone()
    for key in keys:
        def record(q, k, v, extra_options, key=key):
            calls.append((key, tuple(extra_options["block"]) + (extra_options["block_index"],),
                          list(extra_options["cond_or_uncond"]), q.shape[-1]))
            return optimized_attention(q, k, v, extra_options["n_heads"])
        patched.set_model_attn2_replace(record, *key)
    out = pm.host_eps(patched, pair["x"], SIGMA, [pair["cond"], pair["uncond"]])

    assert len(calls) == len(keys)  # one batched call per layer: cond and uncond rows together
    assert {c[0] for c in calls} == set(keys)
    assert all(c[0] == c[1] for c in calls)
    assert all(c[2] == [1, 0] for c in calls)  # the host puts the uncond rows first
    widths = dict(info["cross_attn"])
    assert all(widths[c[0]] == c[3] for c in calls)
    # The replacement computes the same attention, so the output is unchanged.
    for a, b in zip(out, pair["host"]):
        assert rel_err(a, b) <= 1e-5
    # The clone's patches did not leak into the original patcher.
    assert "patches_replace" not in pair["patcher"].model_options.get("transformer_options", {})


def test_reference_agrees_with_layer_table(pair):
    from ipadapter_suite.ipadapter_core.layers import LAYOUTS

    info = pair["info"]
    sites = LAYOUTS[info["layout"]]
    assert [s.key for s in sites] == [key for key, _ in info["cross_attn"]]
    assert [s.n for s in sites] == info["ip_numbers"]
    # Tiny widths are the full-size ones scaled by model_channels / 320.
    assert [s.width * info["model_channels"] // 320 for s in sites] == [w for _, w in info["cross_attn"]]


def random_base_adapter(info, embed_dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = info["context_dim"]

    def rnd(*shape, scale=1.0):
        return torch.randn(shape, generator=gen) * scale

    image_proj = {"proj.weight": rnd(4 * c, embed_dim, scale=embed_dim ** -0.5), "proj.bias": rnd(4 * c, scale=0.1),
                  "norm.weight": 1 + rnd(c, scale=0.1), "norm.bias": rnd(c, scale=0.1)}
    ip_adapter = {}
    for n, (_, width) in zip(info["ip_numbers"], info["cross_attn"]):
        ip_adapter[f"{n}.to_k_ip.weight"] = rnd(width, c, scale=c ** -0.5)
        ip_adapter[f"{n}.to_v_ip.weight"] = rnd(width, c, scale=c ** -0.5)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def test_diffusers_loads_base_adapter_and_scale(pair, pm):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    info, patcher = pair["info"], pair["patcher"]
    unet = copy.deepcopy(pair["unet"])  # loading changes the unet; keep the shared one plain
    embed_dim = 24
    pm.diffusers_load_ip_adapter(unet, random_base_adapter(info, embed_dim))
    procs = {name: p for name, p in unet.attn_processors.items() if isinstance(p, IPAdapterAttnProcessor2_0)}
    assert list(procs) == info["cross_attn_names"]
    assert [p.to_k_ip[0].out_features for p in procs.values()] == [w for _, w in info["cross_attn"]]

    emb = torch.randn((1, 2, embed_dim), generator=torch.Generator().manual_seed(7))  # [B, images, E]
    kwargs = {"image_embeds": [emb]}
    plain = pair["diffusers"][0]
    pm.diffusers_set_scale(unet, 0.0)
    assert all(p.scale == [0.0] for p in procs.values())
    zero = pm.diffusers_eps(unet, patcher, pair["x"], SIGMA, pair["cond"], added_cond_kwargs=kwargs)
    assert rel_err(zero, plain) <= 1e-6
    pm.diffusers_set_scale(unet, 1.0)
    one = pm.diffusers_eps(unet, patcher, pair["x"], SIGMA, pair["cond"], added_cond_kwargs=kwargs)
    assert rel_err(one, plain) > 1e-3
