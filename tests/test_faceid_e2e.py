"""The real host, end to end with the FaceID nodes: ComfyUI's server loads the extension and runs
CheckpointLoaderSimple / LoadImage -> LoadFaceAnalysis -> EncodeFacePrompt (with CLIP vision) -> LoadIPAdapter
(FaceID Plus v2 at real size, random weights) -> ApplyIPAdapter (embedded LoRA, shortcut) -> KSampler -> SaveImage,
with a stand-in insightface pack (tests/face_models.py)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import HOST, NO_HOST_REASON
from host_server import comfy_server, prepare_base, request, run_prompt

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
pytest.importorskip("onnx", reason="onnx (requirements-dev.txt) builds the stand-in face models")
pytest.importorskip("onnxruntime", reason="onnxruntime (requirements-faceid.txt) runs the face models")

PLUS_V2 = "ip-adapter-faceid-plusv2_sd15.safetensors"


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    import face_models
    from faceid_formats import write_random_faceid
    base = tmp_path_factory.mktemp("comfy_faceid")
    prepare_base(base)
    models = base / "models"
    for sub in ("checkpoints", "clip_vision", "ipadapter"):
        (models / sub).mkdir(parents=True)
    os.symlink(model_files["sd15"], models / "checkpoints" / "sd15-random.safetensors")
    os.symlink(model_files["vit_h"], models / "clip_vision" / "vit-h-random.safetensors")
    write_random_faceid(models / "ipadapter" / PLUS_V2, "ip-adapter-faceid-plusv2_sd15", seed=1)
    face_models.write_pack(models / "insightface" / "models" / "buffalo_l", det_size=160)
    g = np.random.default_rng(0)
    face = (150 + g.integers(0, 90, (200, 200, 3))).astype(np.uint8)  # bright: the stand-in detector's "face"
    Image.fromarray(face).save(base / "input" / "face.png")
    Image.fromarray((face // 6).astype(np.uint8)).save(base / "input" / "dark.png")
    with comfy_server(base) as srv:
        yield srv


def _graph(image="face.png", clip_vision=True):
    encode = {"face_analysis": ["13", 0], "image": ["3", 0], "face": "largest", "face_index": 0, "max_faces": 1}
    if clip_vision:
        encode["clip_vision"] = ["2", 0]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15-random.safetensors"}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-h-random.safetensors"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": image}},
        "4": {"class_type": "LoadIPAdapter", "inputs": {"ipadapter_name": PLUS_V2, "faceid_variant": "plus v2"}},
        "13": {"class_type": "LoadFaceAnalysis", "inputs": {"model_pack": "buffalo_l", "backend": "onnxruntime",
                                                           "det_size": 160}},
        "5": {"class_type": "EncodeFacePrompt", "inputs": encode},
        "6": {"class_type": "ApplyIPAdapter", "inputs": {"model": ["1", 0], "ipadapter": ["4", 0],
                                                         "image_prompt": ["5", 0], "weight": 0.8, "start_at": 0.0,
                                                         "end_at": 1.0, "lora_strength": 0.6,
                                                         "shortcut_weight": 1.5}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait", "clip": ["1", 1]}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "seed": 1, "steps": 2, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "normal",
                                                    "positive": ["7", 0], "negative": ["8", 0],
                                                    "latent_image": ["9", 0], "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "faceid_e2e"}},
    }


def test_faceid_graph_writes_an_image(server):
    info = request(server["port"], "/object_info")
    assert info["LoadFaceAnalysis"]["input"]["required"]["model_pack"][1]["options"] == ["buffalo_l"]
    result = run_prompt(server["port"], _graph())
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000]
    images = result["outputs"]["12"]["images"]
    path = server["base"] / "output" / images[0].get("subfolder", "") / images[0]["filename"]
    with Image.open(path) as img:
        assert img.size == (64, 64)
        assert np.asarray(img).std() > 0


def test_plus_without_clip_vision_and_an_image_without_a_face_fail_before_sampling(server):
    result = run_prompt(server["port"], _graph(clip_vision=False))
    assert result["status"]["status_str"] == "error"
    messages = json.dumps(result["status"]["messages"])
    assert "Encode Face Prompt's clip_vision" in messages and "ApplyIPAdapter" in messages
    result = run_prompt(server["port"], _graph(image="dark.png"))
    assert result["status"]["status_str"] == "error"
    assert "no usable face" in json.dumps(result["status"]["messages"])
