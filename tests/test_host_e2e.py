"""The real host, end to end: ComfyUI's server on 127.0.0.1 loads this extension from custom_nodes and runs
CheckpointLoaderSimple -> LoadIPAdapter / EncodeImagePrompt / ApplyIPAdapter -> KSampler -> VAEDecode -> SaveImage
with model files the test writes (random weights, real SD1.5 / ViT-H layouts)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import HOST, NO_HOST_REASON
from host_server import comfy_server, prepare_base, request, run_prompt
from official_formats import write_random_adapter

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    prepare_base(base)
    models = base / "models"
    for sub in ("checkpoints", "clip_vision", "ipadapter"):
        (models / sub).mkdir(parents=True)
    os.symlink(model_files["sd15"], models / "checkpoints" / "sd15-random.safetensors")
    os.symlink(model_files["vit_h"], models / "clip_vision" / "vit-h-random.safetensors")
    for stem in ("ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter_sd15_vit-G"):
        write_random_adapter(models / "ipadapter" / f"{stem}.safetensors", stem, seed=len(stem))
    pixels = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(base / "input" / "ref.png")
    with comfy_server(base) as srv:
        yield srv


def _graph(ipadapter_name, weight=1.0):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15-random.safetensors"}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-h-random.safetensors"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
        "4": {"class_type": "LoadIPAdapter", "inputs": {"ipadapter_name": ipadapter_name}},
        "5": {"class_type": "EncodeImagePrompt", "inputs": {"clip_vision": ["2", 0], "image": ["3", 0]}},
        "6": {"class_type": "ApplyIPAdapter", "inputs": {"model": ["1", 0], "ipadapter": ["4", 0],
                                                         "image_prompt": ["5", 0], "weight": weight,
                                                         "start_at": 0.0, "end_at": 1.0}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "seed": 1, "steps": 2, "cfg": 7.5,
                                                    "sampler_name": "euler", "scheduler": "normal",
                                                    "positive": ["7", 0], "negative": ["8", 0],
                                                    "latent_image": ["9", 0], "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "ipadapter_e2e"}},
    }


def test_nodes_register_without_import_errors(server):
    info = request(server["port"], "/object_info")
    for node in ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter"):
        assert node in info, f"{node} not registered"
    assert info["ApplyIPAdapter"]["output"] == ["MODEL"]
    assert info["ApplyIPAdapter"]["input"]["required"]["image_prompt"][0] == "IMAGE_PROMPT"
    assert "ip-adapter_sd15.safetensors" in info["LoadIPAdapter"]["input"]["required"]["ipadapter_name"][1]["options"]
    log = server["log"].read_text()
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, log[-3000:]


@pytest.mark.parametrize("adapter", ["ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"])
def test_graph_writes_an_image(server, adapter):
    result = run_prompt(server["port"], _graph(adapter))
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000]
    images = result["outputs"]["12"]["images"]
    path = server["base"] / "output" / images[0].get("subfolder", "") / images[0]["filename"]
    with Image.open(path) as img:
        assert img.size == (64, 64)
        assert np.asarray(img).std() > 0  # a real decode, not a blank


def test_wrong_encoder_fails_before_sampling_with_the_fix(server):
    result = run_prompt(server["port"], _graph("ip-adapter_sd15_vit-G.safetensors"))
    assert result["status"]["status_str"] == "error"
    messages = json.dumps(result["status"]["messages"])
    assert "ViT-bigG/14" in messages and "Load CLIP Vision" in messages
    assert "ApplyIPAdapter" in messages  # raised by our node, before KSampler ran
