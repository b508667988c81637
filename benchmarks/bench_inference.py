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
    tmp = Path(tempfile.mkdtemp(prefix="ipadapter-bench-"))
    try:
        model, clip_vision, adapters = load_models(tmp)
        import comfy.model_management
        print(f"device {comfy.model_management.get_torch_device()}, torch threads {torch.get_num_threads()}, "
              f"image {args.size}px, {args.steps} timed steps per configuration")
        costs, prompt = one_off_costs(model, clip_vision, adapters, args.size)
        patching = launch.submodule("host.patching")
        models = {"unpatched": model}
        models.update({k: patching.apply_ip_adapter(model, a, prompt, 1.0, 0.0, 1.0) for k, a in adapters.items()})
        report(step_times(models, args.size, args.steps), costs, clone_costs(model, models["plus"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_models(tmp: Path):
    """Random-weight, full-size files in the official layouts, loaded with the host's loaders."""
    import comfy.clip_vision
    import comfy.sd
    from host_models import make_clip_vision_vit_h, make_sd15_checkpoint
    from official_formats import write_random_adapter
    files = launch.submodule("host.files")
    make_sd15_checkpoint(str(tmp / "sd15.safetensors"))
    make_clip_vision_vit_h(str(tmp / "vit-h.safetensors"))
    write_random_adapter(tmp / "base.safetensors", "ip-adapter_sd15", seed=1)
    write_random_adapter(tmp / "plus.safetensors", "ip-adapter-plus_sd15", seed=2)
    model = comfy.sd.load_checkpoint_guess_config(str(tmp / "sd15.safetensors"), output_vae=False,
                                                  output_clip=False)[0]
    clip_vision = comfy.clip_vision.load(str(tmp / "vit-h.safetensors"))
    adapters = {kind: files.load_adapter(str(tmp / f"{kind}.safetensors")) for kind in ("base", "plus")}
    return model, clip_vision, adapters


def one_off_costs(model, clip_vision, adapters, size: int):
    """Plain encode, first / next Encode Image Prompt, Apply per adapter (seconds), and the prompt."""
    vision, patching = launch.submodule("host.vision"), launch.submodule("host.patching")
    image = torch.rand(1, size, size, 3)
    clip_vision.encode_image(image)  # warm-up: weights loaded
    costs = {"plain": median_time(lambda: clip_vision.encode_image(image), 3)}
    start = time.perf_counter()
    prompt = vision.encode_image_prompt(clip_vision, image)
    costs["first"] = time.perf_counter() - start
    costs["next"] = median_time(lambda: vision.encode_image_prompt(clip_vision, torch.rand(1, size, size, 3)), 3)
    for kind, adapter in adapters.items():
        costs[kind] = median_time(lambda a=adapter: patching.apply_ip_adapter(model, a, prompt, 1.0, 0.0, 1.0), 3)
    return costs, prompt


def step_times(models: dict, size: int, steps: int) -> dict:
    """Median time of one sampling step per model, the configurations interleaved."""
    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device)
    contexts = [torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)]
    sigma = torch.tensor([1.0], device=device)
    fns = {k: step_fn(m, x, sigma, build_conds(m, x, contexts)) for k, m in models.items()}
    for fn in fns.values():
        fn()  # warm-up
    samples = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            samples[k].append(median_time(fn, 1))
    return {k: statistics.median(v) for k, v in samples.items()}


def clone_costs(model, patched) -> dict:
    clone = patched.clone()
    held = tensor_storages(patched.model_options)
    return {"plain": median_time(model.clone, 20), "patched": median_time(patched.clone, 20),
            "new_bytes": sum(size for ptr, size in tensor_storages(clone.model_options).items() if ptr not in held),
            "ip_bytes": sum(held.values())}


def report(step: dict, costs: dict, clone: dict) -> None:
    print("\n1. sampling step (cond+uncond batch)")
    for k in step:
        print(f"   {k:10s} {step[k] * 1000:9.1f} ms   ratio {step[k] / step['unpatched']:.3f}")
    plain = costs["plain"]
    print("\n2. one-off cost")
    print(f"   plain CLIP vision encode          {plain * 1000:8.1f} ms   1.00")
    print(f"   EncodeImagePrompt, first prompt   {costs['first'] * 1000:8.1f} ms   {costs['first'] / plain:.2f}x "
          "(includes the zero-image uncond, once per encoder)")
    print(f"   EncodeImagePrompt, next prompts   {costs['next'] * 1000:8.1f} ms   {costs['next'] / plain:.2f}x")
    for k in ("base", "plus"):
        print(f"   ApplyIPAdapter ({k})              {costs[k] * 1000:8.1f} ms   {costs[k] / plain:.2f}x")
    print("\n3. clone")
    print(f"   plain model clone    {clone['plain'] * 1e6:8.1f} us")
    print(f"   patched model clone  {clone['patched'] * 1e6:8.1f} us   ratio {clone['patched'] / clone['plain']:.2f}")
    print(f"   tensor bytes held by the patches {clone['ip_bytes']}; new in the clone: {clone['new_bytes']}")


if __name__ == "__main__":
    main()
