"""Every file a shipped workflow names, keyed by its standard file name: the host folder it goes in and how a test
makes a random-weight (or generated) stand-in with the real layout. A workflow added to ``workflows/`` gets its
files from here without any test being edited; a name missing here fails ``test_every_named_file_has_a_maker``.

A maker is called as ``maker(path, session_files)``; ``session_files`` is the ``model_files`` fixture (the SD1.5
checkpoint and ViT-H file written once per test session), which makers link to instead of writing again.
"""
import os
import shutil
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

import host_models
from official_formats import OFFICIAL, write_random_adapter

# Strings in a workflow that look like a file name: each must have an entry below.
FILE_NAME = re.compile(r"^(?:[^/\\]+/)?[^/\\]+\.(safetensors|ckpt|pt|pth|bin|gguf|png|jpe?g|webp)$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelFile:
    folder: str  # under the host's base directory: "models/<folder>" or "input"
    maker: callable
    host_args: tuple = field(default=())  # host options a run with this file needs (memory), e.g. fp8 UNet
    # None: a stand-in with the real layout is written and workflows naming the file run in the test host; else
    # why none can be (the file is only a placeholder, so the workflow is checked and loaded but not run)
    not_runnable: str | None = None


def _shared(key):
    def make(path, session_files):
        os.symlink(session_files[key], path)
    return make


def _adapter(stem):
    def make(path, session_files):
        write_random_adapter(path, stem, seed=len(stem))
    return make


def _sdxl(path, session_files):
    host_models.make_sdxl_checkpoint(str(path), seed=0)


def _controlnet(path, session_files):
    host_models.make_controlnet_sd15(str(path), seed=0)


def _saved_prompt(path, session_files):
    """What Save Image Prompt writes for one image encoded with ViT-H/14 (random features of the real shapes)."""
    from ipadapter_suite.ipadapter_core import ImagePrompt, save_image_prompt
    g = torch.Generator().manual_seed(0)
    embeds, hidden = torch.randn(1, 1024, generator=g), torch.randn(1, 257, 1280, generator=g)
    save_image_prompt(path, ImagePrompt(embeds, hidden, torch.zeros_like(embeds), torch.randn(1, 257, 1280, generator=g)))


def _image(seed, hole=False, width=64):
    """A noise PNG 64 px high; with ``hole``, RGBA with a transparent square (LoadImage's MASK is 1 there)."""
    def make(path, session_files):
        pixels = np.random.default_rng(seed).integers(0, 256, (64, width, 4), dtype=np.uint8)
        pixels[..., 3] = 255
        if hole:
            pixels[16:48, 16:48, 3] = 0
        Image.fromarray(pixels if hole else pixels[..., :3]).save(path)
    return make


def _placeholder(path, session_files):
    """A file the host lists (so a workflow naming it loads), holding no model."""
    if str(path).endswith(".bin"):
        torch.save({"placeholder": torch.zeros(1)}, str(path))
        return
    import safetensors.torch
    safetensors.torch.save_file({"placeholder": torch.zeros(1)}, str(path))


T5_REASON = ("FLUX.1-dev and SD3.5 Large read the T5-XXL text encoder, whose size the host fixes (4.7B parameters, "
             "9.5 GB in fp16): no stand-in runs on the test host in time")
_DIT_FILES = {"flux1-dev.safetensors": "models/diffusion_models", "t5xxl_fp16.safetensors": "models/text_encoders",
              "clip_l.safetensors": "models/text_encoders", "ae.safetensors": "models/vae",
              "clip-vit-large-patch14.safetensors": "models/clip_vision",
              "flux-ip-adapter-v2.safetensors": "models/ipadapter",
              "sd3.5_large.safetensors": "models/checkpoints", "clip_g.safetensors": "models/text_encoders",
              "sigclip_vision_patch14_384.safetensors": "models/clip_vision",
              "ip-adapter-sd3.5-large.bin": "models/ipadapter",
              "siglip-so400m-patch14-384.safetensors": "models/clip_vision",
              "ip-adapter-flux1-dev-instantx.bin": "models/ipadapter"}

REGISTRY = {
    "v1-5-pruned-emaonly.safetensors": ModelFile("models/checkpoints", _shared("sd15")),
    # Real size (2.6B-parameter UNet), stored in fp8; the host keeps its UNet in fp8 (fp32 compute) so that a
    # test run needs 2.6 GB of memory for it instead of 10 GB.
    "sd_xl_base_1.0.safetensors": ModelFile("models/checkpoints", _sdxl, host_args=("--fp8_e4m3fn-unet",)),
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": ModelFile("models/clip_vision", _shared("vit_h")),
    "control_v11p_sd15_canny_fp16.safetensors": ModelFile("models/controlnet", _controlnet),
    "example.png": ModelFile("input", _image(0)),
    "example_style.png": ModelFile("input", _image(1)),
    "example_scene.png": ModelFile("input", _image(2, hole=True)),
    "example_wide.png": ModelFile("input", _image(3, width=160)),
    "image_prompts/example_prompt.safetensors": ModelFile("input", _saved_prompt),
}
REGISTRY.update({f"{stem}.safetensors": ModelFile("models/ipadapter", _adapter(stem)) for stem in OFFICIAL})
REGISTRY.update({name: ModelFile(folder, _placeholder, not_runnable=T5_REASON) for name, folder in _DIT_FILES.items()})


def _faceid(stem):
    def make(path, session_files):
        from faceid_formats import write_random_faceid
        write_random_faceid(path, stem, seed=len(stem))
    return make


def _bright_image(path, session_files):
    """A bright noise PNG: the stand-in face detector (face_models.py) finds its faces in bright images."""
    pixels = np.random.default_rng(7).integers(150, 240, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


REGISTRY["ip-adapter-faceid-plusv2_sd15.bin"] = ModelFile("models/ipadapter",
                                                          _faceid("ip-adapter-faceid-plusv2_sd15"))
REGISTRY["example_face.png"] = ModelFile("input", _bright_image)
# Load Face Analysis's model packs (folders, not file names): pack -> maker(folder).
FACE_PACKS = {"buffalo_l": lambda folder: __import__("face_models").write_pack(folder, det_size=640)}


def provide_face_packs(workflows, base):
    """models/insightface/models/<pack>/ for every pack a workflow's Load Face Analysis names (stand-in ONNX files;
    needs the onnx package)."""
    packs = {n["widgets_values"][0] for w in workflows for n in w["nodes"] if n["type"] == "LoadFaceAnalysis"}
    for pack in sorted(packs):
        FACE_PACKS[pack](base / "models" / "insightface" / "models" / pack)


def named_files(workflow):
    """The file-like strings among a UI workflow's widget values (notes excluded)."""
    names = set()
    for node in workflow["nodes"]:
        values = node.get("widgets_values") or []
        values = values.values() if isinstance(values, dict) else values
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        names.update(v for v in values if isinstance(v, str) and FILE_NAME.match(v))
    return names


def provide(names, base, session_files, cache):
    """Put each named file in the host base directory ``base``; files made once are linked from ``cache``."""
    for name in sorted(names):
        entry = REGISTRY[name]
        target = base / entry.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            continue
        made = cache / name
        made.parent.mkdir(parents=True, exist_ok=True)
        if not made.exists():
            entry.maker(made, session_files)
        if entry.folder == "input":
            # The host refuses an input file whose real path is outside input/ (a symlink out of it): a real file.
            shutil.copyfile(os.path.realpath(made), target)
        else:
            os.symlink(os.path.realpath(made), target)


def host_args(names):
    return tuple(sorted({arg for name in names if name in REGISTRY for arg in REGISTRY[name].host_args}))


def not_runnable(names) -> str | None:
    """Why a workflow naming these files cannot run in the test host, or None when it can."""
    reasons = sorted({REGISTRY[name].not_runnable for name in names if name in REGISTRY} - {None})
    return "; ".join(reasons) or None
