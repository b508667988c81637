"""Cost of the DiT IP-Adapter patches, as ratios against the unpatched model measured in the same run.

    python benchmarks/bench_dit.py [--family flux|instantx_flux|sd35] [--hidden 512] [--heads 4] [--latent 32]
                                   [--text 64] [--tokens 16] [--steps 5]

flux: the host's own Flux (``comfy.ldm.flux.model.Flux``) with the real block structure (19 double and 38 single
blocks) at the given width with random weights, and an XLabs adapter with its real token width (4096) and token
count (4 or 16) for that width. instantx_flux: the same Flux and an InstantX FLUX.1-dev adapter with its real
token width (4096), token count (128) and projection (1152 -> 2304 -> 128 x 4096), on all 57 blocks. sd35: the
host's MMDiT with SD3.5 Large's 38 joint blocks at the given width and an InstantX adapter with its real
resampler. Measures:
  1. one sampling step (cond + uncond rows in one batch, the host's calc_cond_batch): unpatched vs patched,
     interleaved, medians -> ratio (target <= 1.05);
  2. Apply IP-Adapter (flux: projecting the tokens, K'/V' of 19 or 57 blocks): median time, against one step;
  3. flux, instantx_flux: one double (and one single) block bare vs through its patch, many interleaved calls
     (less exposed to a shared machine's noise than whole steps), and the step ratio it implies.
instantx_blocks: one host double block and one single block at FLUX.1's real width (3072, 24 heads of 128), real
token counts (--latent 64: a 512 px image, 1024 image tokens; --text 512) and 128 image-prompt tokens, bare vs
through the InstantX patch (K'/V' random, as the patch holds them): the per-block cost at full size, which the
whole model (12 B parameters) cannot show on a CPU; and Apply's work at full size (a random bf16 adapter with the
published shapes, 2.65 B weights: image tokens, then K'/V' of the 57 blocks for cond and uncond).
Needs the ComfyUI host (COMFYUI_PATH or $HOME/ComfyUI). Prints a table; asserts nothing.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path += [str(REPO), str(REPO / "tests")]  # launch.py; the tests' model builders (flux_models)

import launch  # noqa: E402


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _flux(args, g):
    """The host Flux, an XLabs adapter file's tensors (real token width 4096), the prompt's feature shapes."""
    import flux_models as fm
    patcher = fm.host_flux(seed=0, hidden=args.hidden, heads=args.heads)
    flat = fm.xlabs_adapter(1, tokens=args.tokens, hidden=args.hidden, width=4096, embed=768)
    features = (torch.randn(1, 768, generator=g), torch.randn(1, 257, 1024, generator=g))
    return patcher, flat, features, (fm.CONTEXT, fm.VEC)


def _instantx_flux(args, g):
    """The host Flux, an InstantX FLUX.1-dev file's tensors (128 tokens of 4096, all 57 blocks), SigLIP-sized
    features (pooled 1152, 729 x 1152 hidden states)."""
    import flux_models as fm
    patcher = fm.host_flux(seed=0, hidden=args.hidden, heads=args.heads)
    flat = fm.instantx_adapter(1, tokens=128, hidden=args.hidden, width=4096, embed=1152, inner=2304)
    features = (torch.randn(1, 1152, generator=g), torch.randn(1, 729, 1152, generator=g))
    return patcher, flat, features, (fm.CONTEXT, fm.VEC)


def _sd35(args, g):
    """The host MMDiT (38 joint blocks, width 64 * depth), an InstantX adapter's tensors (64 tokens, the real
    resampler sizes 1280 / 20 heads / 320), SigLIP-sized features (729 x 1152)."""
    import sd3_models as sm
    depth = args.hidden // 64
    patcher = sm.host_sd3(seed=0, depth=depth)
    nested = sm.instantx_adapter(1, width=64 * depth, dim=1280, time_dim=320, tokens=64, embed=1152)
    flat = {f"{part}.{k}": v for part in nested for k, v in nested[part].items()}
    features = (torch.randn(1, 1152, generator=g), torch.randn(1, 729, 1152, generator=g))
    return patcher, flat, features, (sm.CONTEXT, sm.POOLED)


def build(args):
    """(extension, plain patcher, adapter, image prompt, latent, conds)."""
    import safetensors.torch
    ext = launch.import_extension()
    launch.submodule("nodes")  # the host-facing parts (the ipadapter model folder)
    g = torch.Generator().manual_seed(0)
    make = {"flux": _flux, "instantx_flux": _instantx_flux, "sd35": _sd35}[args.family]
    patcher, flat, (embeds, hidden), (context, pooled) = make(args, g)
    path = Path(tempfile.mkdtemp()) / "adapter.safetensors"
    safetensors.torch.save_file(flat, str(path))
    adapter = ext.host.files.load_adapter(str(path))
    prompt = ext.ipadapter_core.with_default_uncond(embeds, hidden, torch.randn(hidden.shape, generator=g))
    x = torch.randn(1, 16, args.latent, args.latent, generator=g)
    conds = [(torch.randn(1, args.text, context, generator=g), torch.randn(1, pooled, generator=g))
             for _ in range(2)]
    return ext, patcher, adapter, prompt, x, conds


def block_times(patched, plain_step_s, x, conds, repeat, key=("double_block", 0)):
    """Flux: one block's call, bare vs through its IP-Adapter patch, on the inputs a sampling step gives it
    (recorded from a real step), interleaved medians; and the step ratio this implies if every patched block of
    its kind cost the same."""
    import flux_models as fm
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    patch, seen = dit[key], {}

    def record(args, extra):
        seen.update(args=args)
        return patch(args, extra)

    patched.set_model_patch_replace(record, "dit", *key)
    fm.host_velocity(patched, x, fm.SIGMA, conds)
    patched.set_model_patch_replace(patch, "dit", *key)
    net = patched.get_model_object("diffusion_model")
    double = key[0] == "double_block"
    args, block = seen["args"], (net.double_blocks if double else net.single_blocks)[key[1]]

    def original(a):  # the host's own wrapper closes over its loop variable: call the block itself
        if double:  # the block adds to txt in place
            img, txt = block(img=a["img"], txt=a["txt"].clone(), vec=a["vec"], pe=a["pe"],
                             attn_mask=a.get("attn_mask"), transformer_options=a["transformer_options"])
            return {"img": img, "txt": txt}
        return {"img": block(a["img"].clone(), vec=a["vec"], pe=a["pe"], attn_mask=a.get("attn_mask"),
                             transformer_options=a["transformer_options"])}  # adds to its input in place

    bare, hooked = [], []
    with torch.no_grad():
        for _ in range(repeat):
            bare.append(median_time(lambda: original(args), 1))
            hooked.append(median_time(lambda: patch(args, {"original_block": original}), 1))
    bare_s, hooked_s = statistics.median(bare), statistics.median(hooked)
    count = sum(1 for k in dit if k[0] == key[0])
    return bare_s, hooked_s, count * (hooked_s - bare_s) / plain_step_s


def instantx_blocks(args):
    """InstantX patch on one real-width double and one single block: (name, bare s, patched s) rows."""
    import comfy.ops
    from comfy.ldm.flux.layers import DoubleStreamBlock, EmbedND, SingleStreamBlock
    import flux_models as fm
    launch.import_extension()
    from ipadapter_suite.ipadapter_core.attention import Branch
    from ipadapter_suite.ipadapter_core.dit import head_rms_norm
    from ipadapter_suite.ipadapter_core.dit_attention import InstantXFluxPatch
    hidden, heads, g = 3072, 24, torch.Generator().manual_seed(0)
    ops = comfy.ops.disable_weight_init
    side = args.latent // 2
    ids = torch.zeros(1, args.text + side * side, 3)
    ids[0, args.text:, 1] = torch.arange(side).repeat_interleave(side).float()
    ids[0, args.text:, 2] = torch.arange(side).repeat(side).float()
    pe = EmbedND(dim=hidden // heads, theta=10000, axes_dim=[16, 56, 56])(ids).expand(2, -1, -1, -1, -1, -1)
    kv = [head_rms_norm(torch.randn(1, 128, hidden, generator=g), hidden // heads) for _ in range(4)]
    branch = Branch(*kv, weight=1.0)
    rows = []
    with torch.no_grad():
        for double in (True, False):
            block = (DoubleStreamBlock(hidden, heads, 4.0, qkv_bias=True, operations=ops) if double
                     else SingleStreamBlock(hidden, heads, 4.0, operations=ops))
            fm.randomize(block, 1)
            img = torch.randn(2, side * side if double else args.text + side * side, hidden, generator=g)
            args_ = {"img": img, "vec": torch.randn(2, hidden, generator=g), "pe": pe, "attn_mask": None,
                     "transformer_options": {}}
            if double:
                args_["txt"] = torch.randn(2, args.text, hidden, generator=g)

            def original(a, block=block, double=double):
                if double:
                    return dict(zip(("img", "txt"), block(img=a["img"], txt=a["txt"].clone(), vec=a["vec"],
                                                          pe=a["pe"], transformer_options=a["transformer_options"])))
                return {"img": block(a["img"].clone(), vec=a["vec"], pe=a["pe"],
                                     transformer_options=a["transformer_options"])}

            patch = InstantXFluxPatch((branch,), double=double, heads=heads)
            original(args_)  # warm-up
            bare, hooked = [], []
            for _ in range(args.block_repeat):
                bare.append(median_time(lambda: original(args_), 1))
                hooked.append(median_time(lambda: patch(args_, {"original_block": original}), 1))
            rows.append(("double block" if double else "single block", statistics.median(bare),
                         statistics.median(hooked)))
    return rows


def instantx_apply(repeat=2):
    """Seconds of Apply's work for a full-size InstantX FLUX.1-dev adapter (bf16, host manual-cast layers) and one
    image: the tokens and every block's K'/V' (what ``build_dit_branches`` computes), on the host's device."""
    import comfy.model_management
    import comfy.ops
    launch.import_extension()
    from ipadapter_suite.ipadapter_core import with_default_uncond
    from ipadapter_suite.ipadapter_core.dit import build_dit_adapter
    from ipadapter_suite.ipadapter_core.dit_attention import build_dit_branches
    from dit_formats import instantx_flux
    flat = {f"{part}.{k}": torch.randn(v.shape, dtype=torch.bfloat16) * 0.02
            for part, values in instantx_flux().items() for k, v in values.items()}
    adapter = build_dit_adapter(flat, comfy.ops.manual_cast)
    prompt = with_default_uncond(torch.randn(1, 1152), torch.randn(1, 729, 1152), torch.randn(1, 729, 1152))
    weights = dict.fromkeys(adapter.spec.block_keys, 1.0)
    device = comfy.model_management.get_torch_device()
    return median_time(lambda: build_dit_branches(adapter, prompt, weights, head_dim=128, compute_device=device),
                       repeat), str(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=("flux", "instantx_flux", "instantx_blocks", "sd35"), default="flux")
    parser.add_argument("--hidden", type=int, default=512, help="model width (sd35: a multiple of 64)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--latent", type=int, default=32, help="latent side (tokens: (side/2)^2)")
    parser.add_argument("--text", type=int, default=64, help="text tokens")
    parser.add_argument("--tokens", type=int, default=16, choices=(4, 16), help="XLabs tokens (flux)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--block-repeat", type=int, default=40, help="interleaved calls of one block (flux)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 is steadier "
                        "on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    launch.import_host(cpu=not torch.cuda.is_available())
    import flux_models as fm
    if args.family == "instantx_blocks":
        print(f"FLUX.1 blocks at full width (3072, 24 heads of 128), {(args.latent // 2) ** 2} image + {args.text} "
              "text tokens, cond + uncond rows; InstantX patch with 128 image-prompt tokens")
        print("| block | bare | through the patch | ratio |\n|---|---|---|---|")
        for name, bare_s, hooked_s in instantx_blocks(args):
            print(f"| {name} | {bare_s * 1e3:.0f} ms | {hooked_s * 1e3:.0f} ms | {hooked_s / bare_s:.3f} |")
        print("A FLUX.1 step is 19 double + 38 single blocks plus a small rest: the step ratio is about the blocks'"
              " time-weighted mean.")
        seconds, device = instantx_apply()
        print(f"Apply's work at full size (tokens + K'/V' of 57 blocks, cond and uncond) on {device}: "
              f"{seconds:.1f} s")
        return
    ext, plain, adapter, prompt, x, conds = build(args)

    def apply():
        return ext.host.patching.apply_ip_adapter(plain, adapter, prompt, 1.0, 0.0, 1.0)

    patched = apply()
    step = {name: (lambda m=m: fm.host_velocity(m, x, fm.SIGMA, conds)) for name, m in
            (("plain", plain), ("patched", patched))}
    for fn in step.values():
        fn()  # warm-up
    times = {"plain": [], "patched": []}
    for _ in range(args.steps):
        for name, fn in step.items():
            times[name].append(median_time(fn, 1))
    plain_s, patched_s = (statistics.median(times[n]) for n in ("plain", "patched"))
    apply_s = median_time(apply, 5)
    tokens = (args.latent // 2) ** 2
    if args.family == "instantx_flux":
        print(f"Flux, 19 double + 38 single blocks, hidden {args.hidden} ({args.heads} heads), {tokens} image + "
              f"{args.text} text tokens, cond + uncond rows; InstantX FLUX.1-dev adapter with 128 tokens of width "
              "4096 on all 57 blocks")
    elif args.family == "flux":
        print(f"Flux, 19 double + 38 single blocks, hidden {args.hidden} ({args.heads} heads), {tokens} image + "
              f"{args.text} text tokens, cond + uncond rows; XLabs adapter with {args.tokens} tokens of width 4096")
    else:
        print(f"SD3.5-Large-shaped MMDiT, 38 joint blocks, hidden {args.hidden} ({args.hidden // 64} heads), "
              f"{tokens} image + {args.text} text tokens, cond + uncond rows; InstantX adapter, 64 tokens, "
              "resampler 1280 wide over 729 SigLIP tokens (run at every step)")
    print("| measure | time | ratio |\n|---|---|---|")
    print(f"| sampling step, unpatched | {plain_s * 1e3:.0f} ms | 1.000 |")
    print(f"| sampling step, patched | {patched_s * 1e3:.0f} ms | {patched_s / plain_s:.3f} |")
    print(f"| Apply IP-Adapter | {apply_s * 1e3:.1f} ms | {apply_s / plain_s:.3f} of a step |")
    if args.family == "sd35":
        features = prompt.hidden.expand(2, -1, -1).float()  # cond + uncond rows
        with torch.no_grad():
            resample_s = median_time(lambda: adapter.model.image_proj(features, torch.full((2,), 600.0)), 5)
        print(f"| of which the resampler (once per step, both rows) | {resample_s * 1e3:.0f} ms | "
              f"{resample_s / plain_s:.3f} of a step |")
        print(f"| patched step without the resampler | | {(patched_s - resample_s) / plain_s:.3f} |")
    if args.family != "sd35":
        keys = [("double_block", 0)] + ([("single_block", 0)] if args.family == "instantx_flux" else [])
        implied = 1.0
        for key in keys:
            bare_s, hooked_s, extra = block_times(patched, plain_s, x, conds, args.block_repeat, key)
            implied += extra
            name = key[0].replace("_", " ")
            print(f"| {name} 0, bare | {bare_s * 1e3:.2f} ms | 1.000 |")
            print(f"| {name} 0, through the patch | {hooked_s * 1e3:.2f} ms | {hooked_s / bare_s:.3f} |")
        print(f"| step implied by the block figures (every patched block) | | {implied:.3f} |")


if __name__ == "__main__":
    main()
