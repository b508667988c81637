"""Time of SigLIP's pooling head against the host's SigLIP tower, at so400m-384's real size, on the CPU.

    python benchmarks/bench_siglip_head.py [--images 1] [--repeats 3] [--threads 2]

Builds the host's ClipVisionModel from its own ``clip_vision_siglip_384.json`` (27 layers, width 1152, 384 px) with
random weights, and the head (ipadapter_core/siglip_head.py) at its published shapes with random weights; then
times, in the same run, the host's ``encode_image`` (the tower, preprocessing included) and the head on its
``last_hidden_state`` (float32), best of ``--repeats``. Reported: both times and head / tower.
Needs the ComfyUI host (COMFYUI_PATH or $HOME/ComfyUI). Prints a table; asserts nothing.
"""
import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def build(host_root):
    import torch
    import comfy.clip_vision
    from ipadapter_suite.ipadapter_core.siglip_head import (SO400M_INTERMEDIATE, SO400M_WIDTH, build_pooling_head,
                                                            head_shapes)
    siglip = comfy.clip_vision.ClipVisionModel(os.path.join(host_root, "comfy", "clip_vision_siglip_384.json"))
    g = torch.Generator().manual_seed(0)
    siglip.load_sd({k: torch.randn(v.shape, generator=g) * 0.02 + (1.0 if "norm" in k and k.endswith("weight") else 0)
                    for k, v in siglip.get_sd().items()})
    head = build_pooling_head({k: torch.randn(s, generator=g) * 0.02
                               for k, s in head_shapes(SO400M_WIDTH, SO400M_INTERMEDIATE).items()})
    return siglip, head


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.path.append(str(REPO))
    import torch
    import launch
    host_root = launch.import_host(cpu=True)
    launch.import_extension()
    torch.set_num_threads(args.threads)
    siglip, head = build(str(host_root))
    images = torch.rand(args.images, 384, 384, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        states = siglip.encode_image(images, crop=False)["last_hidden_state"].float()  # (n, 729, 1152)
        tower = best_of(args.repeats, lambda: siglip.encode_image(images, crop=False))
        pooled = best_of(args.repeats, lambda: head(states))
    print(f"images {args.images}, threads {args.threads}, tokens {states.shape[1]}, width {states.shape[2]}")
    print(f"{'part':<28}{'seconds':>10}")
    print(f"{'host tower (encode_image)':<28}{tower:>10.3f}")
    print(f"{'pooling head':<28}{pooled:>10.4f}")
    print(f"head / tower: {pooled / tower:.4f}")


if __name__ == "__main__":
    main()
