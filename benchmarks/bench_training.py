"""Training throughput and peak memory, as ratios against a baseline measured in the same run.

    python benchmarks/bench_training.py [--config tiny|sd15|both] [--size 256] [--batch 1] [--steps 3] [--dtype bf16]

Three ways to run the same training step (adapter inside the host UNet through the nodes' patch, epsilon MSE,
AdamW), each in its own process so that its peak memory (max RSS, or CUDA peak) is its own:
  reencode-fp32  the reference trainer's way: VAE + CLIP image + CLIP text encoded every step, every model fp32;
  uncached       this trainer without a cache: frozen models stored in bf16, encoders run every step;
  cached         this trainer from the pre-encode cache: only the bf16 UNet is loaded.
``tiny``: the tests' tiny models at 64 px. ``sd15``: random-weight, real-size SD1.5 + ViT-H/14 files (written
once to a temporary folder with the test helpers) at --size px. Targets: cached >= 1.5x the re-encoding loop's
samples/s, peak memory <= 0.6x. ``--dtype fp32`` stores this trainer's frozen models in fp32 too (on a CPU without
fast bf16 kernels, small models train faster in fp32). Prints a table; asserts nothing. Needs the ComfyUI host.
"""
import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODES = ("reencode-fp32", "uncached", "cached")


def _setup_paths():
    for path in (REPO, REPO / "tests"):
        if str(path) not in sys.path:
            sys.path.append(str(path))


STORAGE = {"bf16": torch.bfloat16, "fp32": None}


def frozen_models(config: str, mode: str, files: dict, cache: Path, storage: str = "bf16"):
    from ipadapter_suite.training.frozen import load_frozen
    dtype = None if mode == "reencode-fp32" else STORAGE[storage]
    if config == "tiny":
        from training_models import tiny_sd15
        return tiny_sd15().to("cpu", dtype)
    if mode == "cached":
        from ipadapter_suite.training import cache as cache_mod
        frozen = load_frozen(files["sd15"], None, dtype, encoders=False)
        frozen.with_cache_widths(cache_mod.load_meta(cache)["embed_width"], cache_mod.zero_image_hidden(cache))
    else:
        frozen = load_frozen(files["sd15"], files["vit_h"], dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return frozen.to(device, dtype)


def samples(count: int, size: int):
    g = torch.Generator().manual_seed(0)
    return [{"pixels": torch.rand(3, size, size, generator=g), "text": f"a photo number {i}"} for i in range(count)]


def precache(config: str, files: dict, cache: Path, size: int, count: int, storage: str) -> None:
    """Write the cache the 'cached' mode reads (not timed)."""
    from ipadapter_suite.training import cache as cache_mod
    frozen = frozen_models(config, "uncached", files, cache, storage)
    items = samples(count, size)
    tensors = cache_mod.encode_samples(frozen, items, "pooled", STORAGE[storage] or torch.float32)
    tensors["index"] = torch.arange(count)
    cache.mkdir(parents=True, exist_ok=True)
    cache_mod.save_tensors(tensors, cache / "part-000-00000.safetensors")
    cache_mod.finish_cache(frozen, cache, {"resolution": size, "feature": "pooled"}, {})


def worker(config: str, mode: str, files: dict, cache: Path, size: int, batch: int, steps: int,
           storage: str) -> dict:
    """Warm-up step, then ``steps`` timed steps; returns samples/s and this process's peak memory."""
    import torch.nn.functional as F
    from comfy.ldm.modules.attention import optimized_attention
    from ipadapter_suite.training import cache as cache_mod
    from ipadapter_suite.training.model import AdapterTraining, new_adapter, new_spec
    frozen = frozen_models(config, mode, files, cache, storage)
    device = frozen.base_model.diffusion_model.parameters().__next__().device
    module = AdapterTraining(new_adapter(frozen, new_spec(frozen, "base"), 0), frozen.base_model,
                             optimized_attention).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.01)
    items = samples(batch, size)
    records = cache_mod.cached_records(cache) if mode == "cached" else None

    def step(k):
        if records:
            rows = [cache_mod.read_cached(records[(k * batch + i) % len(records)]) for i in range(batch)]
            enc = {key: torch.stack([r[key] for r in rows]).float() for key in rows[0]}
        else:
            enc = cache_mod.encode_samples(frozen, items, "pooled", torch.float32)
        latents = enc["latents"].to(device)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=device)
        eps = module(enc["features"].to(device), enc["context"].to(device), latents, noise, t)
        F.mse_loss(eps, noise).backward()
        optimizer.step()
        optimizer.zero_grad()

    step(0)
    start = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"samples_per_s": steps * batch / elapsed, "peak_bytes": peak, "step_s": elapsed / steps}


def run_worker(*args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(config: str, files: dict, root: Path, size: int, batch: int, steps: int, storage: str) -> dict:
    cache = root / f"cache-{config}"
    named = json.dumps({k: str(v) for k, v in files.items()})
    run_worker("precache", config, named, cache, size, batch, steps, storage)
    results = {}
    for mode in MODES:
        results[mode] = run_worker(mode, config, named, cache, size, batch, steps, storage)
        print(f"  {config:5s} {mode:14s} {results[mode]['samples_per_s']:8.3f} samples/s "
              f"{results[mode]['peak_bytes'] / 2**30:7.2f} GiB peak", flush=True)
    return results


def report(config: str, results: dict) -> None:
    base = results["reencode-fp32"]
    print(f"\n{config}: ratio against the re-encoding fp32 loop (same run)")
    print("| mode | samples/s | speed ratio | peak memory | memory ratio |\n|---|---|---|---|---|")
    for mode in MODES:
        r = results[mode]
        print(f"| {mode} | {r['samples_per_s']:.3f} | {r['samples_per_s'] / base['samples_per_s']:.2f} | "
              f"{r['peak_bytes'] / 2**30:.2f} GiB | {r['peak_bytes'] / base['peak_bytes']:.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("tiny", "sd15", "both"), default="both")
    p.add_argument("--size", type=int, default=256, help="training resolution of the sd15 config (px)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", choices=tuple(STORAGE), default="bf16",
                   help="storage dtype of this trainer's frozen models (the baseline loop is always fp32)")
    p.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    args = p.parse_args()
    _setup_paths()
    import launch
    launch.import_host()
    launch.import_extension()  # the package ``ipadapter_suite``: its training modules by name
    if args.worker:
        mode, config, files, cache, size, batch, steps, storage = args.worker
        files, cache, size, batch, steps = json.loads(files), Path(cache), int(size), int(batch), int(steps)
        if mode == "precache":
            precache(config, files, cache, size, batch, storage)
            print(json.dumps({}))
        else:
            print(json.dumps(worker(config, mode, files, cache, size, batch, steps, storage)))
        return
    root = Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        configs = ("tiny", "sd15") if args.config == "both" else (args.config,)
        for config in configs:
            files = {}
            if config == "sd15":
                import host_models
                files = {"sd15": root / "sd15.safetensors", "vit_h": root / "vit-h.safetensors"}
                host_models.make_sd15_checkpoint(str(files["sd15"]), seed=0)
                host_models.make_clip_vision_vit_h(str(files["vit_h"]), seed=0)
            size = 64 if config == "tiny" else args.size
            print(f"{config}: {size} px, batch {args.batch}, {args.steps} timed steps after one warm-up, frozen "
                  f"models stored in {args.dtype}", flush=True)
            report(config, bench(config, files, root, size, args.batch, args.steps, args.dtype))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
