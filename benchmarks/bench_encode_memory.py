"""Peak memory of EncodeImagePrompt for 10 / 100 / 1,000 frames: chunked (batch_size 8) vs all frames at once.

    python benchmarks/bench_encode_memory.py [--frames 10 100 1000] [--chunk 8]

Each measurement runs in a fresh process: a random-weight CLIP vision encoder with 257 tokens per image (224 px,
14 px patches; width 256, 4 layers, so that 1,000 frames take seconds, not an hour), frames of 64x64 pixels, then one
encode. Reported: the process's peak resident memory above what it held just before the encode, the size of the
encode's output (the features kept for every frame, which any method must hold), and the peak minus the output:
the working memory, which chunking keeps flat. Ratios are chunked / all-at-once from the same run.
Needs the ComfyUI host (COMFYUI_PATH or $HOME/ComfyUI). Prints a table; asserts nothing.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENCODER = {"hidden_size": 256, "image_size": 224, "intermediate_size": 1024, "num_attention_heads": 4,
           "num_hidden_layers": 4, "patch_size": 14, "projection_dim": 128}


def measure(frames: int, batch_size: int) -> dict:
    """In this process: peak RSS growth (MiB) of one encode of ``frames`` frames, and the output's size."""
    sys.path += [str(REPO), str(REPO / "tests")]  # launch.py; the tests' model builders
    import torch
    import launch
    launch.import_host(cpu=True)
    from host_models import tiny_clip_vision
    ext = launch.import_extension()
    launch.submodule("host.vision")
    torch.manual_seed(0)
    clip_vision = tiny_clip_vision(tempfile.mkdtemp(), seed=0, **ENCODER)
    images = torch.rand(frames, 64, 64, 3)
    ext.host.vision.zero_image_hidden(clip_vision)  # the once-per-encoder uncond, outside the measurement
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        prompt = ext.host.vision.encode_image_prompt(clip_vision, images, batch_size=batch_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    output = prompt.embeds.nbytes + prompt.hidden.nbytes  # the uncond rows are views of one zero-image encode
    return {"peak_mib": (peak - before) / 1024, "output_mib": output / 2**20}


def run(frames: int, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(frames), str(batch_size)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    print(f"{'frames':>6} | {'output MiB':>10} | {'peak, chunk ' + str(args.chunk):>15} | {'peak, all at once':>17} | "
          f"{'working, chunked':>16} | {'working, all':>12} | ratio")
    for frames in args.frames:
        chunked, whole = run(frames, args.chunk), run(frames, frames)
        work_c, work_w = chunked["peak_mib"] - chunked["output_mib"], whole["peak_mib"] - whole["output_mib"]
        print(f"{frames:>6} | {chunked['output_mib']:>10.1f} | {chunked['peak_mib']:>15.1f} | "
              f"{whole['peak_mib']:>17.1f} | {work_c:>16.1f} | {work_w:>12.1f} | "
              f"{chunked['peak_mib'] / max(whole['peak_mib'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
