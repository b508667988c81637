"""FaceID costs, as ratios against a plain CLIP vision encode measured in the same run.

    python benchmarks/bench_faceid.py [--repeat 5] [--det-size 640]

Writes random-weight, full-size files (an SD1.5 checkpoint, a ViT-H/14 CLIP vision file, ip-adapter-faceid-plusv2_sd15
and ip-adapter-plus_sd15 in their official layouts) and a stand-in insightface pack whose detector and recognizer
have the real files' signatures and conv stacks of about the real models' cost (SCRFD-10G ~10 GFLOPs at 640 px,
IResNet-50 ~6.3 GFLOPs at 112 px; tests/face_models.py); the real buffalo_l files cannot be downloaded here. Then:
  1. one plain CLIP vision encode of one image (the baseline, 1.00);
  2. per image: face analysis (letterbox, detector, decode, NMS, alignment, recognizer) with the onnxruntime
     backend (and insightface's, where installed); Encode Face Prompt without CLIP (FaceID, Portrait) and with it
     (Plus / Plus v2: + the 224 px crop through CLIP vision);
  3. Apply IP-Adapter with the FaceID Plus v2 file (projection, K'/V', the LoRA's weight patches registered) and
     with a plus adapter; the LoRA merged into the weights when the host loads the model (patch_model), against
     loading the plain model.
Needs the ComfyUI host, onnx and onnxruntime. Prints a table; asserts nothing.
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
sys.path += [str(REPO), str(REPO / "tests")]  # launch.py; the tests' model builders

import launch  # noqa: E402


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_files(tmp: Path, det_size: int):
    import face_models
    from faceid_formats import write_random_faceid
    from host_models import make_clip_vision_vit_h, make_sd15_checkpoint
    from official_formats import write_random_adapter
    make_sd15_checkpoint(str(tmp / "sd15.safetensors"))
    make_clip_vision_vit_h(str(tmp / "vit-h.safetensors"))
    write_random_faceid(tmp / "faceid-plusv2.safetensors", "ip-adapter-faceid-plusv2_sd15", seed=1)
    write_random_adapter(tmp / "plus.safetensors", "ip-adapter-plus_sd15", seed=2)
    face_models.write_pack(tmp / "insightface" / "models" / "standin", det_size, compute=True)


def load(tmp: Path, det_size: int):
    import comfy.clip_vision
    import comfy.sd
    import folder_paths
    files, faces = launch.submodule("host.files"), launch.submodule("host.face_analysis")
    model = comfy.sd.load_checkpoint_guess_config(str(tmp / "sd15.safetensors"), output_vae=False,
                                                  output_clip=False)[0]
    clip_vision = comfy.clip_vision.load(str(tmp / "vit-h.safetensors"))
    adapters = {"faceid plus v2": files.load_adapter(str(tmp / "faceid-plusv2.safetensors"), "plus v2"),
                "plus": files.load_adapter(str(tmp / "plus.safetensors"))}
    folder_paths.add_model_folder_path("insightface", str(tmp / "insightface"))
    backends = {"onnxruntime": faces.load_face_analysis("standin", "onnxruntime", det_size)}
    try:
        backends["insightface"] = faces.load_face_analysis("standin", "insightface", det_size)
    except Exception as exc:  # optional: reported, not fatal
        print(f"insightface backend not measured: {exc}")
    return model, clip_vision, adapters, backends


def face_image(size=512):
    g = torch.Generator().manual_seed(0)
    return (0.55 + 0.4 * torch.rand(size, size, 3, generator=g)).clamp(0, 1)  # bright: the stand-in's "face"


def encode_costs(clip_vision, backends, repeat):
    vision, encode = launch.submodule("host.vision"), launch.submodule("host.face_prompt")
    image = face_image()
    crop = torch.rand(1, 224, 224, 3)
    clip_vision.encode_image(crop)  # warm-up
    vision.zero_image_hidden(clip_vision)  # cached once per encoder, as in a run
    costs = {"plain CLIP vision encode (1 image)": median_time(lambda: clip_vision.encode_image(crop), repeat)}
    for name, fa in backends.items():
        fa.faces(image)  # warm-up
        costs[f"face analysis, {name}"] = median_time(lambda fa=fa: fa.faces(image), repeat)
    fa = backends["onnxruntime"]
    costs["Encode Face Prompt (FaceID)"] = median_time(lambda: encode.encode_face_prompt(fa, image[None]), repeat)
    costs["Encode Face Prompt + CLIP crop (Plus)"] = median_time(
        lambda: encode.encode_face_prompt(fa, image[None], clip_vision), repeat)
    return costs, encode.encode_face_prompt(fa, image[None], clip_vision)


def apply_costs(model, clip_vision, adapters, face_prompt, repeat):
    patching, vision = launch.submodule("host.patching"), launch.submodule("host.vision")
    image_prompt = vision.encode_image_prompt(clip_vision, torch.rand(1, 224, 224, 3))
    prompts = {"faceid plus v2": face_prompt, "plus": image_prompt}
    costs, patched = {}, {}
    for name, adapter in adapters.items():
        apply = lambda a=adapter, p=prompts[name]: patching.apply_ip_adapter(model, a, p, 1.0, 0.0, 1.0)
        patched[name] = apply()
        costs[f"Apply IP-Adapter ({name})"] = median_time(apply, repeat)

    def load_weights(m):
        m.patch_model()
        m.unpatch_model()
    costs["model load, plain (patch_model)"] = median_time(lambda: load_weights(model), repeat)
    costs["model load, FaceID LoRA merged"] = median_time(lambda: load_weights(patched["faceid plus v2"]), repeat)
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--det-size", type=int, default=640, help="the detector's input size")
    args = parser.parse_args()
    launch.import_host(cpu=not torch.cuda.is_available())
    tmp = Path(tempfile.mkdtemp(prefix="ipadapter-bench-faceid-"))
    try:
        write_files(tmp, args.det_size)
        with torch.inference_mode():  # as the host's executor runs nodes
            model, clip_vision, adapters, backends = load(tmp, args.det_size)
            encode, prompt = encode_costs(clip_vision, backends, args.repeat)
            apply = apply_costs(model, clip_vision, adapters, prompt, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import comfy.model_management
    print(f"device {comfy.model_management.get_torch_device()}, torch threads {torch.get_num_threads()}, "
          f"det_size {args.det_size}, median of {args.repeat}")
    base = next(iter(encode.values()))
    for name, seconds in {**encode, **apply}.items():
        print(f"   {name:42s} {seconds * 1000:9.1f} ms   {seconds / base:6.2f}x")


if __name__ == "__main__":
    main()
