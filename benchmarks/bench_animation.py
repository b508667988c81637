"""Memory and time of IP-Adapter animations: Apply IP-Adapter (Advanced) with batch unfold and per-frame weights,
then one sampling step through context windows, for 16 / 256 / 1,000 frames.

    python benchmarks/bench_animation.py [--frames 16 256 1000] [--layouts sd15 sdxl] [--window 16]

Each (layout, frames) runs in a fresh process: a host UNet with the real layer layout and random weights (SD1.5 at
its full width; SDXL with its real 70 cross-attention layers at reduced widths, model channels 32, and its full
cross-attention width 2048, so that the image tokens have their real size), a plus adapter (16 tokens, resampler,
fp16 weights as the official files), one reference image per frame (ViT-H/14 hidden states, 257 x 1280, the default
negative), a linear weight per frame. The step runs every window of ``--window`` frames (static, no overlap, the
last window moved back to stay full) with AnimateDiff-Evolved's ``ad_params``, cond and uncond rows together, on a
latent of 8 x 8. Memory is the process's resident set (``/proc/self/status``; the peak is reset before each phase
with ``/proc/self/clear_refs``):

- Apply: growth (held after it) and peak above the start, against the image tokens' own bytes (frames x 16 tokens
  x width x 2 for cond and uncond, fp32: the data every frame needs);
- step: growth held after all windows, and its peak above the unpatched model's peak over the same windows (what
  the patch adds to sampling), which must not grow with the number of windows; the time of all windows against
  the unpatched model's;
- the K'/V' of every layer and frame that a per-frame K'/V' store would hold, by formula at full widths.

A last process times one step of a single-image prompt (one window of 16 frames, cond + uncond) against the
unpatched model on the full-width SD1.5 UNet, interleaved, medians. Prints tables; asserts nothing.
"""
import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2 ** 20
TOKENS, PATCHES, HIDDEN, EMBED = 16, 257, 1280, 1024  # plus adapter, ViT-H/14 features
LAYOUTS = {
    "sd15": dict(context_dim=768, model_channels=320, heads=8, resampler=768),
    "sdxl": dict(context_dim=2048, model_channels=32, heads=2, resampler=1280),
}


def rss(key: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key + ":"))


def settle() -> None:
    """Freed memory given back to the system (glibc keeps it otherwise), so that RSS is what is held."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> None:
    settle()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS


def windows(frames: int, length: int) -> list[list[int]]:
    """Static windows without overlap; the last one moved back to stay ``length`` long (as the samplers do)."""
    out = [list(range(s, min(s + length, frames))) for s in range(0, frames, length)]
    if len(out[-1]) < length <= frames:
        out[-1] = list(range(frames - length, frames))
    return out


def setup(layout: str, frames: int):
    """The host model, a plus adapter (fp16, host manual-cast ops), a prompt of one image per frame, conds."""
    sys.path += [str(REPO), str(REPO / "tests")]  # launch.py; the tests' model builders
    import torch
    import launch
    launch.import_host(cpu=True)
    ext = launch.import_extension()
    launch.submodule("host.patching")
    launch.submodule("host.files")
    import comfy.ops
    from parity_models import _randomize, host_model
    from bench_inference import build_conds
    cfg = LAYOUTS[layout]
    patcher = host_model(layout, cfg["context_dim"], cfg["model_channels"], cfg["heads"], seed=0)
    layers = ext.host.unet.cross_attention_layers(patcher)
    core = ext.ipadapter_core
    spec = core.AdapterSpec(
        kind="plus", feature="hidden", tokens=TOKENS, encoder_width=HIDDEN, cross_attention_dim=cfg["context_dim"],
        family=layout, layers=tuple((s.n, layers[s.key].to_k.out_features) for s in core.LAYOUTS[layout]),
        resampler_dim=cfg["resampler"], resampler_depth=4, resampler_heads=cfg["resampler"] // 64,
        resampler_ff_mult=4)
    model = core.IPAdapterModel(spec, comfy.ops.manual_cast)  # the host's ops leave weights uninitialised
    _randomize(model, seed=2)
    adapter = ext.host.files.LoadedAdapter("bench", model.half().eval().requires_grad_(False))
    g = torch.Generator().manual_seed(1)
    prompt = core.with_default_uncond(torch.randn(frames, EMBED, generator=g),
                                      torch.randn(frames, PATCHES, HIDDEN, generator=g),
                                      torch.randn(1, PATCHES, HIDDEN, generator=g))
    x = torch.randn(frames, 4, 8, 8, generator=g)
    contexts = [torch.randn(1, 77, cfg["context_dim"], generator=g) for _ in range(2)]
    return ext, patcher, adapter, prompt, x, build_conds(patcher, x, contexts)


def window_step(model, conds, x, idxs):
    """One UNet call on the frames ``idxs`` (cond + uncond rows), as AnimateDiff-Evolved's windowed sampling."""
    import torch
    import comfy.samplers
    options = dict(model.model_options)
    params = {"full_length": x.shape[0], "context_length": len(idxs), "sub_idxs": idxs}
    options["transformer_options"] = {**options.get("transformer_options", {}), "ad_params": params}
    with torch.inference_mode():
        comfy.samplers.calc_cond_batch(model.model, conds, x[idxs], torch.full((len(idxs),), 1.7), options)


def run_windows(model, conds, x, spans) -> tuple[float, int]:
    """Every window once: (seconds, peak RSS above the start); the peak is reset first."""
    model.pre_run()
    reset_peak()
    start, begin = rss(), time.perf_counter()
    for idxs in spans:
        window_step(model, conds, x, idxs)
    return time.perf_counter() - begin, rss("VmHWM") - start


def measure(layout: str, frames: int, window: int) -> dict:
    import torch
    ext, patcher, adapter, prompt, x, conds = setup(layout, frames)
    import comfy.model_management
    comfy.model_management.load_models_gpu([patcher])
    spans = windows(frames, window)
    patching = ext.host.patching
    schedule = ext.ipadapter_core.FrameWeights(tuple(0.5 + i / frames for i in range(frames)))
    options = patching.ApplyOptions(unfold_batch=True, frame_weights=schedule)
    # Warm-up: kernels, allocator, and a first Apply of 9 frames, one full chunk of the token projection (the
    # libraries' buffers for its shapes are their own constant memory, outside the figures).
    with torch.inference_mode():
        few = ext.ipadapter_core.ImagePrompt(*(t[:9] for _, t in prompt.named_tensors()))
        run_windows(patching.apply_ip_adapter(patcher, adapter, few, 1.0, 0.0, 1.0, options), conds, x, spans[:1])
        run_windows(patcher, conds, x, spans[:1])
    base_time, base_peak = run_windows(patcher, conds, x, spans)  # the unpatched step: every window
    reset_peak()
    start, begin = rss(), time.perf_counter()
    with torch.inference_mode():
        model = patching.apply_ip_adapter(patcher, adapter, prompt, 1.0, 0.0, 1.0, options)
    apply_time = time.perf_counter() - begin
    settle()
    applied = rss()
    apply_growth, apply_peak = applied - start, rss("VmHWM") - start
    step_time, step_peak = run_windows(model, conds, x, spans)
    settle()
    branch = next(iter(model.model_options["transformer_options"]["patches_replace"]["attn2"].values())).branches[0]
    return dict(layout=layout, frames=frames, windows=len(spans), apply_s=apply_time, apply_growth=apply_growth,
                apply_peak=apply_peak, step_growth=rss() - applied, base_peak=base_peak,
                step_extra_peak=step_peak - base_peak, stored=branch.frames.token_bytes,
                window_ratio=step_time / base_time)


def single_image(steps: int) -> dict:
    """Interleaved step times, one image (no unfold) vs the unpatched model: one window of 16 frames."""
    import torch
    ext, patcher, adapter, prompt, x, conds = setup("sd15", 16)
    import comfy.model_management
    patching = ext.host.patching
    single = ext.ipadapter_core.ImagePrompt(prompt.embeds[:1], prompt.hidden[:1], prompt.uncond_embeds[:1],
                                            prompt.uncond_hidden[:1])
    with torch.inference_mode():
        model = patching.apply_ip_adapter(patcher, adapter, single, 1.0, 0.0, 1.0)
    comfy.model_management.load_models_gpu([patcher])
    idxs, times = list(range(16)), {"plain": [], "patched": []}
    for i in range(steps + 1):
        for name, m in (("plain", patcher), ("patched", model)):
            m.pre_run()
            begin = time.perf_counter()
            window_step(m, conds, x, idxs)
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - begin)
    return {name: statistics.median(t) for name, t in times.items()}


def child(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


FULL_WIDTHS = {"sd15": 12_480, "sdxl": 83_200}  # sum of the layers' widths at full size (docs/inference.md)


def report(row: dict) -> str:
    width = LAYOUTS[row["layout"]]["context_dim"]
    tokens = row["frames"] * TOKENS * width * 2 * 4  # cond + uncond tokens of every frame, fp32
    kv_full = row["frames"] * FULL_WIDTHS[row["layout"]] * TOKENS * 2 * 2 * 4  # per-frame K'/V', every layer
    cells = [row["layout"], row["frames"], row["windows"], tokens / MIB, row["stored"] / MIB,
             row["apply_growth"] / MIB, row["apply_peak"] / MIB, row["step_growth"] / MIB,
             row["base_peak"] / MIB, row["step_extra_peak"] / MIB, row["apply_growth"] / tokens, kv_full / MIB,
             row["window_ratio"], row["apply_s"]]
    return " | ".join(f"{c:,.2f}" if isinstance(c, float) else f"{c:,}" if isinstance(c, int) else c
                      for c in cells)


HEADER = ("layout | frames | windows | tokens MiB | stored MiB | apply growth MiB | apply peak MiB | "
          "step growth MiB | unpatched step peak MiB | step peak over unpatched MiB | apply growth / tokens | "
          "per-frame K'V' MiB (full size, formula) | step time patched / unpatched | apply s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 256, 1000])
    parser.add_argument("--layouts", nargs="+", default=["sd15", "sdxl"], choices=list(LAYOUTS))
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--steps", type=int, default=7, help="timed rounds of the single-image step")
    parser.add_argument("--only", choices=["frames", "single"], help="run only the frame table or the single-image "
                        "timing")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = single_image(int(rest[0])) if kind == "single" else measure(kind, int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return
    if args.only != "single":
        print(HEADER)
        for layout in args.layouts:
            for frames in args.frames:
                print(report(child(layout, frames, args.window)), flush=True)
    if args.only == "frames":
        return
    times = child("single", args.steps)
    print(f"single image, one window of 16 frames (SD1.5 full width): patched {times['patched'] * 1e3:.0f} ms, "
          f"unpatched {times['plain'] * 1e3:.0f} ms, ratio {times['patched'] / times['plain']:.3f}")


if __name__ == "__main__":
    main()
