"""Training throughput and peak memory, as ratios against the reference trainer measured in the same run.

    python benchmarks/bench_training.py [--config tiny|sd15|both] [--size 256] [--batch 1] [--steps 3] [--dtype bf16]
                                        [--reference PATH | --no-reference]

Each way of training runs in its own process, so that its peak memory (max RSS, or CUDA peak) is its own:
  reference      the reference trainer itself, tencent-ailab/IP-Adapter's tutorial_train.py (benchmarks/
                 reference_trainer.py): diffusers/transformers models, all fp32, VAE + CLIP image + CLIP text encoded
                 every step (sd15 config only; its code is read from a git copy of that repository: --reference PATH,
                 a checkout or a bare clone, else a shallow clone when the network allows; without one the table
                 says so and the emulated loop below is the baseline);
  reencode-fp32  the reference's loop emulated with this trainer's step (adapter inside the host UNet through the
                 nodes' patch, epsilon MSE, AdamW): every frozen model fp32, encoders run every step;
  uncached       this trainer without a cache: frozen models stored in bf16, encoders run every step;
  cached         this trainer from the pre-encode cache: only the bf16 UNet is loaded.
``tiny``: the tests' tiny models at 64 px. ``sd15``: random-weight, real-size SD1.5 + ViT-H/14 files (written
once to a temporary folder with the test helpers; the reference's diffusers-layout copies with its own classes) at
--size px. Targets: cached >= 1.5x the reference's samples/s, peak memory <= 0.6x. ``--dtype fp32`` stores this
trainer's frozen models in the host's default dtypes instead. Prints a table; asserts nothing. Needs the ComfyUI
host (and, for the reference, diffusers, transformers and torchvision).
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
REFERENCE = "reference"
LABELS = {REFERENCE: "reference trainer (tutorial_train.py, all fp32)",
          "reencode-fp32": "re-encoding loop emulated with this trainer's step, all fp32",
          "uncached": "this trainer, uncached (frozen models {storage})",
          "cached": "this trainer, cached ({storage} UNet only)"}


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
        if mode == "reencode-fp32":  # the host keeps the text and image encoders in fp16 on a CPU
            frozen.clip.cond_stage_model.float()
            frozen.clip_vision.model.float()
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


def prepare_reference(given: str | None, root: Path, size: int, batch: int) -> tuple[dict, str]:
    """The reference's code, diffusers-layout models and data under ``root``: (its paths, a line saying where it
    came from), or ({}, why it will not run)."""
    import reference_trainer
    repo, how = reference_trainer.locate(given, root)
    if repo is None:
        return {}, f"reference trainer not run: {how}"
    paths = {"code": root / "reference-code", "models": root / "reference-models", "output": root / "reference-out"}
    commit = reference_trainer.extract(repo, paths["code"])
    run_worker("write-reference", "sd15", json.dumps({k: str(v) for k, v in paths.items()}), root, size, batch, 0,
               "fp32")
    paths["data"] = reference_trainer.write_data(root / "reference-data", size, batch)
    return {k: str(v) for k, v in paths.items()}, f"reference trainer: tutorial_train.py at {commit[:12]}, {how}"


def bench(config: str, files: dict, root: Path, size: int, batch: int, steps: int, storage: str,
          reference: dict) -> dict:
    cache = root / f"cache-{config}"
    named = json.dumps({k: str(v) for k, v in files.items()})
    run_worker("precache", config, named, cache, size, batch, steps, storage)
    results = {}
    modes = ((REFERENCE,) if reference else ()) + MODES
    for mode in modes:
        args = json.dumps(reference) if mode == REFERENCE else named
        results[mode] = run_worker(mode, config, args, cache, size, batch, steps, storage)
        print(f"  {config:5s} {mode:14s} {results[mode]['samples_per_s']:8.3f} samples/s "
              f"{results[mode]['peak_bytes'] / 2**30:7.2f} GiB peak", flush=True)
    return results


def report(config: str, results: dict, storage: str) -> None:
    base_mode = REFERENCE if REFERENCE in results else "reencode-fp32"
    base = results[base_mode]
    print(f"\n{config}: ratios against the {LABELS[base_mode].split(' (')[0]} (same run)")
    print("| mode | samples/s | speed ratio | peak memory | memory ratio |\n|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {LABELS[mode].format(storage=storage)} | {r['samples_per_s']:.3f} | {r['samples_per_s'] / base['samples_per_s']:.2f} | "
              f"{r['peak_bytes'] / 2**30:.2f} GiB | {r['peak_bytes'] / base['peak_bytes']:.2f} |")


def run_worker_mode(mode: str, config: str, files: str, cache: str, size: str, batch: str, steps: str,
                    storage: str) -> dict:
    """One worker process: write the reference's models, run the reference, write the cache, or time a mode.
    The reference's processes never import the host."""
    files, cache, size, batch, steps = json.loads(files), Path(cache), int(size), int(batch), int(steps)
    if mode in ("write-reference", REFERENCE):
        import reference_trainer
        paths = {k: Path(v) for k, v in files.items()}
        if mode == REFERENCE:
            return reference_trainer.train(paths["code"], paths["models"], paths["data"], paths["output"], size,
                                           batch, steps)
        import launch
        reference_trainer.write_models(paths["models"], launch.find_comfyui() / "comfy" / "sd1_tokenizer")  # SD1.5's
        return {}
    import launch
    launch.import_host()
    launch.import_extension()  # the package ``ipadapter_suite``: its training modules by name
    if mode == "precache":
        precache(config, files, cache, size, batch, storage)
        return {}
    return worker(config, mode, files, cache, size, batch, steps, storage)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("tiny", "sd15", "both"), default="both")
    p.add_argument("--size", type=int, default=256, help="training resolution of the sd15 config (px)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", choices=tuple(STORAGE), default="bf16",
                   help="storage dtype of this trainer's frozen models (the baseline loop is always fp32)")
    p.add_argument("--reference", help="git copy (checkout or bare clone) of tencent-ailab/IP-Adapter "
                                       "(default: a shallow clone, when the network allows)")
    p.add_argument("--no-reference", action="store_true", help="do not run the reference trainer")
    p.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    args = p.parse_args()
    _setup_paths()
    if args.worker:
        print(json.dumps(run_worker_mode(*args.worker)))
        return
    import launch
    launch.import_host()  # the test helpers write the host's model files
    root = Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        configs = ("tiny", "sd15") if args.config == "both" else (args.config,)
        for config in configs:
            files, reference = {}, {}
            if config == "sd15":
                import host_models
                files = {"sd15": root / "sd15.safetensors", "vit_h": root / "vit-h.safetensors"}
                host_models.make_sd15_checkpoint(str(files["sd15"]), seed=0)
                host_models.make_clip_vision_vit_h(str(files["vit_h"]), seed=0)
                if not args.no_reference:
                    reference, line = prepare_reference(args.reference, root, args.size, args.batch)
                    print(line, flush=True)
            size = 64 if config == "tiny" else args.size
            print(f"{config}: {size} px, batch {args.batch}, {args.steps} timed steps after one warm-up, frozen "
                  f"models stored in {args.dtype}", flush=True)
            results = bench(config, files, root, size, args.batch, args.steps, args.dtype, reference)
            report(config, results, args.dtype)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
