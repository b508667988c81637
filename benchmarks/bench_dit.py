"""Cost of the Flux (XLabs) IP-Adapter patch, as ratios against the unpatched model measured in the same run.

    python benchmarks/bench_dit.py [--hidden 512] [--heads 4] [--latent 32] [--text 64] [--tokens 16] [--steps 5]

Builds the host's own Flux (``comfy.ldm.flux.model.Flux``) with the real block structure (19 double and 38 single
blocks) at the given width with random weights, and an XLabs adapter with its real token width (4096) and token
count (4 or 16) for that width, and measures:
  1. one sampling step (cond + uncond rows in one batch, the host's calc_cond_batch): unpatched vs patched,
     interleaved, medians -> ratio (target <= 1.05);
  2. Apply IP-Adapter (projecting the tokens, K'/V' of 19 blocks): median time, against one unpatched step.
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


def build(args):
    """(plain patcher, adapter, image prompt, step inputs)."""
    import safetensors.torch

    import flux_models as fm
    ext = launch.import_extension()
    launch.submodule("nodes")  # the host-facing parts (the ipadapter model folder)
    patcher = fm.host_flux(seed=0, hidden=args.hidden, heads=args.heads)
    sd = fm.xlabs_adapter(1, tokens=args.tokens, hidden=args.hidden, width=4096, embed=768)
    path = Path(tempfile.mkdtemp()) / "xlabs.safetensors"
    safetensors.torch.save_file(sd, str(path))
    adapter = ext.host.files.load_adapter(str(path))
    g = torch.Generator().manual_seed(0)
    prompt = ext.ipadapter_core.with_default_uncond(torch.randn(1, 768, generator=g),
                                                    torch.randn(1, 257, 1024, generator=g),
                                                    torch.randn(1, 257, 1024, generator=g))
    x = torch.randn(1, 16, args.latent, args.latent, generator=g)
    conds = [(torch.randn(1, args.text, fm.CONTEXT, generator=g), torch.randn(1, fm.VEC, generator=g))
             for _ in range(2)]
    return ext, patcher, adapter, prompt, x, conds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--latent", type=int, default=32, help="latent side (tokens: (side/2)^2)")
    parser.add_argument("--text", type=int, default=64, help="text tokens")
    parser.add_argument("--tokens", type=int, default=16, choices=(4, 16))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    launch.import_host(cpu=not torch.cuda.is_available())
    import flux_models as fm
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
    print(f"Flux, 19 double + 38 single blocks, hidden {args.hidden} ({args.heads} heads), {tokens} image + "
          f"{args.text} text tokens, cond + uncond rows; XLabs adapter with {args.tokens} tokens of width 4096")
    print("| measure | time | ratio |\n|---|---|---|")
    print(f"| sampling step, unpatched | {plain_s * 1e3:.0f} ms | 1.000 |")
    print(f"| sampling step, patched | {patched_s * 1e3:.0f} ms | {patched_s / plain_s:.3f} |")
    print(f"| Apply IP-Adapter | {apply_s * 1e3:.1f} ms | {apply_s / plain_s:.3f} of a step |")


if __name__ == "__main__":
    main()
