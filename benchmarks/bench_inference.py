"""Inference cost of the IP-Adapter patch, as ratios against baselines measured in the same run.

    python benchmarks/bench_inference.py [--size 256] [--steps 6]

Writes a random-weight, full-size SD1.5 checkpoint and ViT-H/14 CLIP vision file (the test helpers), loads them
with the host's loaders, and measures:
  1. one sampling step (cond + uncond rows in one batch, the host's calc_cond_batch): unpatched vs base (4 tokens)
     and plus (16 tokens) adapters, interleaved, medians -> ratio (target <= 1.02);
  2. one-off cost: EncodeImagePrompt for a first and a next prompt (the zero-image uncond is cached per encoder)
     and ApplyIPAdapter, against one plain CLIP vision encode;
  3. ModelPatcher.clone() of a patched model vs of the plain model: time, and bytes of tensors the clone holds that
     the original does not (0 = image keys/values are shared, not copied).
Needs the ComfyUI host (COMFYUI_PATH or $HOME/ComfyUI). Prints a table; asserts nothing.
"""
import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path += [str(REPO), str(REPO / "tests")]  # launch.py; the tests' model builders (host_models, official_formats)

import launch  # noqa: E402


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tensor_storages(obj, seen=None, out=None):
    """{storage pointer: bytes} of every tensor reachable through containers and plain objects' attributes."""
    seen = set() if seen is None else seen
    out = {} if out is None else out
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    elif isinstance(obj, dict):
        for value in obj.values():
            tensor_storages(value, seen, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            tensor_storages(value, seen, out)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        tensor_storages(vars(obj), seen, out)
    return out


def build_conds(model, x, contexts):
    import comfy.sampler_helpers
    import comfy.samplers
    conds = {name: comfy.sampler_helpers.convert_cond([[ctx, {}]]) for name, ctx in zip(("positive", "negative"), contexts)}
    conds = comfy.samplers.process_conds(model.model, x, conds, model.load_device)
    return [conds["positive"], conds["negative"]]


def step_fn(model, x, sigma, conds):
    import comfy.model_management
    import comfy.samplers
    comfy.model_management.load_models_gpu([model])
    model.pre_run()  # as the sampler does: sets the current patcher

    def step():
        with torch.no_grad():
            comfy.samplers.calc_cond_batch(model.model, conds, x, sigma, model.model_options)
    return step


def main():
    with torch.inference_mode():  # as the host's executor runs nodes
        run()


def run():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent is size / 8)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    args = parser.parse_args()

    launch.import_host(cpu=not torch.cuda.is_available())
    import comfy.clip_vision
    import comfy.model_management
    import comfy.sd
    from host_models import make_clip_vision_vit_h, make_sd15_checkpoint
    from official_formats import write_random_adapter

    ext = launch.import_extension()
    glue = ext.host
    tmp = Path(tempfile.mkdtemp(prefix="ipadapter-bench-"))
    try:
        make_sd15_checkpoint(str(tmp / "sd15.safetensors"))
        make_clip_vision_vit_h(str(tmp / "vit-h.safetensors"))
        write_random_adapter(tmp / "base.safetensors", "ip-adapter_sd15", seed=1)
        write_random_adapter(tmp / "plus.safetensors", "ip-adapter-plus_sd15", seed=2)
        model = comfy.sd.load_checkpoint_guess_config(str(tmp / "sd15.safetensors"), output_vae=False,
                                                      output_clip=False)[0]
        clip_vision = comfy.clip_vision.load(str(tmp / "vit-h.safetensors"))
        adapters = {kind: glue.files.load_adapter(str(tmp / f"{kind}.safetensors")) for kind in ("base", "plus")}
        device = comfy.model_management.get_torch_device()
        print(f"device {device}, torch threads {torch.get_num_threads()}, image {args.size}px, "
              f"{args.steps} timed steps per configuration")

        # 2. one-off costs
        image = torch.rand(1, args.size, args.size, 3)
        clip_vision.encode_image(image)  # warm-up: weights loaded
        t_plain = median_time(lambda: clip_vision.encode_image(image), 3)
        start = time.perf_counter()
        prompt = glue.vision.encode_image_prompt(clip_vision, image)
        t_first = time.perf_counter() - start
        t_next = median_time(lambda: glue.vision.encode_image_prompt(clip_vision, torch.rand(1, args.size, args.size, 3)), 3)
        t_apply = {k: median_time(lambda a=a: glue.patching.apply_ip_adapter(model, a, prompt, 1.0, 0.0, 1.0), 3)
                   for k, a in adapters.items()}

        # 1. step time, interleaved
        latent = args.size // 8
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, latent, latent, generator=g).to(device)
        contexts = [torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)]
        sigma = torch.tensor([1.0], device=device)
        models = {"unpatched": model}
        models.update({k: glue.patching.apply_ip_adapter(model, a, prompt, 1.0, 0.0, 1.0) for k, a in adapters.items()})
        steps = {k: step_fn(m, x, sigma, build_conds(m, x, contexts)) for k, m in models.items()}
        for fn in steps.values():
            fn()  # warm-up
        samples = {k: [] for k in steps}
        for _ in range(args.steps):
            for k, fn in steps.items():
                samples[k].append(median_time(fn, 1))
        step = {k: statistics.median(v) for k, v in samples.items()}

        # 3. clone
        patched = models["plus"]
        t_clone_plain = median_time(model.clone, 20)
        t_clone_patched = median_time(patched.clone, 20)
        clone = patched.clone()
        new_bytes = sum(size for ptr, size in tensor_storages(clone.model_options).items()
                        if ptr not in tensor_storages(patched.model_options))
        ip_bytes = sum(tensor_storages(patched.model_options).values())

        print("\n1. sampling step (cond+uncond batch)")
        for k in steps:
            print(f"   {k:10s} {step[k] * 1000:9.1f} ms   ratio {step[k] / step['unpatched']:.3f}")
        print("\n2. one-off cost")
        print(f"   plain CLIP vision encode          {t_plain * 1000:8.1f} ms   1.00")
        print(f"   EncodeImagePrompt, first prompt   {t_first * 1000:8.1f} ms   {t_first / t_plain:.2f}x "
              "(includes the zero-image uncond, once per encoder)")
        print(f"   EncodeImagePrompt, next prompts   {t_next * 1000:8.1f} ms   {t_next / t_plain:.2f}x")
        for k, t in t_apply.items():
            print(f"   ApplyIPAdapter ({k})              {t * 1000:8.1f} ms   {t / t_plain:.2f}x")
        print("\n3. clone")
        print(f"   plain model clone    {t_clone_plain * 1e6:8.1f} us")
        print(f"   patched model clone  {t_clone_patched * 1e6:8.1f} us   ratio {t_clone_patched / t_clone_plain:.2f}")
        print(f"   tensor bytes held by the patches {ip_bytes}; new in the clone: {new_bytes}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
