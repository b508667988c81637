"""Bad input to every node, run as the host runs a queued graph (its validation, then its executor under
inference mode, in this process): each case is refused with a one-line message naming the input, the problem and
the fix, either before anything runs (validation) or before sampling (execution), and the same executor then runs
the corrected graph. One row per case; README.md "Bad input" lists what each gets."""
import pickle
from dataclasses import dataclass
from typing import Callable

import pytest
import safetensors.torch
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import CTX, EMBED, HIDDEN, random_prompt, tiny_adapter

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
NAN, INF = float("nan"), float("inf")


class _Payload:
    def __reduce__(self):
        return (open, ("pwned", "w"))


def _write(path, state_dict):
    flat = {f"{p}.{k}": v.contiguous() for p in state_dict for k, v in state_dict[p].items()}
    safetensors.torch.save_file(flat, str(path))


def _adapter_files(folder, widths):
    """Good and broken adapter files, by name."""
    good = tiny_adapter("base", widths, 1)
    _write(folder / "good.safetensors", good)
    variants = {
        "nan_proj.safetensors": ("image_proj", "proj.weight", lambda t: t.index_fill(0, torch.tensor([3, 5]), NAN)),
        "inf_layer.safetensors": ("ip_adapter", "7.to_v_ip.weight", lambda t: t.index_fill(1, torch.tensor([0]), INF)),
        "int_dtype.safetensors": ("ip_adapter", "1.to_k_ip.weight", lambda t: (t * 100).to(torch.int64)),
        "bool_dtype.safetensors": ("image_proj", "norm.bias", lambda t: t > 0),
    }
    for name, (part, key, change) in variants.items():
        broken = {p: dict(v) for p, v in good.items()}
        broken[part][key] = change(broken[part][key])
        _write(folder / name, broken)
    data = (folder / "good.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    safetensors.torch.save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2)},
                                str(folder / "clip_vision_file.safetensors"))
    from tiny_faceid import tiny_faceid
    _write(folder / "faceid.safetensors", tiny_faceid("faceid", widths, 1))
    _write(folder / "faceid_plus.safetensors", tiny_faceid("plus", widths, 2))
    with open(folder / "code.bin", "wb") as f:
        pickle.dump({"image_proj": _Payload(), "ip_adapter": {}}, f)
    wide = {"image_proj": {"proj.weight": torch.randn(8 * CTX, EMBED) * 0.1, "proj.bias": torch.zeros(8 * CTX),
                           "norm.weight": torch.ones(2 * CTX), "norm.bias": torch.zeros(2 * CTX)},
            "ip_adapter": {f"{2 * i + 1}.to_{kv}_ip.weight": torch.randn(width, 2 * CTX) * 0.1
                           for i, width in enumerate(widths) for kv in "kv"}}
    _write(folder / "other_model.safetensors", wide)  # cross-attention width 64: made for another model


def _dit_adapter_files(folder):
    """An XLabs Flux and an InstantX FLUX.1-dev adapter (tiny widths, the files' layouts) and each lacking a
    block's tensor."""
    from flux_models import instantx_adapter, xlabs_adapter
    good = xlabs_adapter(2, embed=EMBED)
    safetensors.torch.save_file(good, str(folder / "flux_xlabs.safetensors"))
    del good["double_blocks.7.processor.ip_adapter_double_stream_k_proj.bias"]
    safetensors.torch.save_file(good, str(folder / "flux_incomplete.safetensors"))
    good = instantx_adapter(3, embed=EMBED)
    safetensors.torch.save_file(good, str(folder / "instantx_flux.safetensors"))
    del good["ip_adapter.40.to_v_ip.weight"]
    safetensors.torch.save_file(good, str(folder / "instantx_incomplete.safetensors"))


def _prompt_files(ext, folder, prompt):
    folder.mkdir(parents=True)
    core = ext.ipadapter_core
    core.save_image_prompt(folder / "good.safetensors", prompt)
    data = (folder / "good.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    bad = core.ImagePrompt(prompt.embeds.clone().fill_(NAN), prompt.hidden, prompt.uncond_embeds, prompt.uncond_hidden)
    core.save_image_prompt(folder / "nan.safetensors", bad)
    safetensors.torch.save_file({"proj.weight": torch.zeros(2, 2)}, str(folder / "foreign.safetensors"))


@pytest.fixture(scope="module")
def world(ext, tmp_path_factory):
    """The tiny SD1.5 model, encoder, adapters and files every case draws from; the host's folders pointed at a
    temporary base for the module."""
    import folder_paths
    import graph_runner
    from host_models import tiny_clip_vision
    from parity_models import build_pair
    root = tmp_path_factory.mktemp("bad_inputs")
    patcher, _, info = build_pair("sd15", seed=0, context_dim=CTX)
    widths = [w for _, w in info["cross_attn"]]
    (root / "ipadapter").mkdir()
    _adapter_files(root / "ipadapter", widths)
    _dit_adapter_files(root / "ipadapter")
    folder_paths.add_model_folder_path("ipadapter", str(root / "ipadapter"))
    clip_vision = tiny_clip_vision(root, seed=3, hidden_size=HIDDEN, projection_dim=EMBED)
    with torch.inference_mode():
        prompt = ext.host.vision.encode_image_prompt(clip_vision, torch.rand(2, 32, 32, 3))
    saved_input = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(root / "input"))
    _prompt_files(ext, root / "input" / "image_prompts", prompt)
    graph_runner.register(ext.nodes.NODE_CLASS_MAPPINGS)
    adapter = ext.host.files.load_adapter(str(root / "ipadapter" / "good.safetensors"))
    other = random_prompt(ext, 1, 5)
    other = ext.ipadapter_core.ImagePrompt(other.embeds[:, :8], other.hidden[..., :40], other.uncond_embeds[:, :8],
                                           other.uncond_hidden[..., :40])  # another encoder's widths
    other_adapter = ext.host.files.load_adapter(str(root / "ipadapter" / "other_model.safetensors"))
    from tiny_faceid import face_prompt
    faceid = ext.host.files.load_adapter(str(root / "ipadapter" / "faceid.safetensors"))
    faceid_plus = ext.host.files.load_adapter(str(root / "ipadapter" / "faceid_plus.safetensors"), "plus v2")
    flux_adapter = ext.host.files.load_adapter(str(root / "ipadapter" / "flux_xlabs.safetensors"))
    yield dict(model=patcher, adapter=adapter, other_adapter=other_adapter, flux_adapter=flux_adapter,
               clip_vision=clip_vision, prompt=prompt, other_prompt=other, root=root, runner=graph_runner,
               faceid=faceid, faceid_plus=faceid_plus,
               face_prompt=face_prompt(ext, 1, seed=2), face_prompt_crops=face_prompt(ext, 1, seed=3, crops=True))
    folder_paths.set_input_directory(saved_input)


# --------------------------------------------------------------------------------------------- graphs

def _graph(w, node, inputs, keep=True):
    """{our node with ``inputs``} (+ Keep of its first output); inputs whose value is a tuple ("TYPE", obj) are
    given by a source node (a link), everything else is a widget constant."""
    graph, wired = {}, {}
    for name, value in inputs.items():
        if isinstance(value, tuple):
            source = str(len(graph) + 10)
            graph[source] = w["runner"].value(*value)
            wired[name] = [source, 0]
        else:
            wired[name] = value
    graph["1"] = {"class_type": node, "inputs": wired}
    if keep:
        graph["2"] = {"class_type": "Keep", "inputs": {"value": ["1", 0], "slot": "out"}}
    return graph


def _apply(w, node="ApplyIPAdapter", **over):
    inputs = {"model": ("MODEL", w["model"]), "ipadapter": ("IPADAPTER", w["adapter"]),
              "image_prompt": ("IMAGE_PROMPT", w["prompt"]), "weight": 1.0, "start_at": 0.0, "end_at": 1.0}
    if node == "ApplyIPAdapterAdvanced":
        inputs.update(layer_weights="linear", composition_weight=1.0, custom_layer_weights="",
                      weight_curve="constant", unfold_batch=False)
    inputs.update(over)
    return _graph(w, node, inputs)


def _advanced(w, **over):
    return _apply(w, "ApplyIPAdapterAdvanced", **over)


def _style_composition(w, **over):
    inputs = {"model": ("MODEL", w["model"]), "ipadapter": ("IPADAPTER", w["adapter"]),
              "image_prompt_style": ("IMAGE_PROMPT", w["prompt"]),
              "image_prompt_composition": ("IMAGE_PROMPT", w["prompt"]), "weight_style": 1.0,
              "weight_composition": 1.0, "expand_style": False, "start_at": 0.0, "end_at": 1.0,
              "embeds_scaling": "V only"}
    inputs.update(over)
    return _graph(w, "ApplyIPAdapterStyleComposition", inputs)


def _encode(w, **over):
    inputs = {"clip_vision": ("CLIP_VISION", w["clip_vision"]), "image": ("IMAGE", torch.rand(2, 32, 32, 3)),
              "fit": "center crop", "batch_size": 8}
    inputs.update(over)
    return _graph(w, "EncodeImagePrompt", inputs)


def _load(w, name, **over):
    return _graph(w, "LoadIPAdapter", {"ipadapter_name": name, **over})


class _NoFaces:
    """A face analysis that finds no face in any image."""

    def faces(self, image):
        return []


class _OneFace(_NoFaces):
    def faces(self, image):
        from ipadapter_suite.host.face_analysis import DetectedFace
        points = torch.tensor([[10.0, 12], [22, 12], [16, 18], [11, 24], [21, 24]])
        return [DetectedFace(torch.tensor([5.0, 5, 27, 29]), 0.9, points, torch.randn(512))]


def _encode_face(w, **over):
    inputs = {"face_analysis": ("FACE_ANALYSIS", _OneFace()), "image": ("IMAGE", torch.rand(2, 32, 32, 3)),
              "face": "largest", "face_index": 0, "max_faces": 1}
    inputs.update(over)
    return _graph(w, "EncodeFacePrompt", inputs)


def _faceid_apply(w, **over):
    inputs = {"ipadapter": ("IPADAPTER", w["faceid"]), "image_prompt": ("IMAGE_PROMPT", w["face_prompt"]), **over}
    return _apply(w, **inputs)


def _tiled(w, **over):
    inputs = {"clip_vision": ("CLIP_VISION", w["clip_vision"]), "image": ("IMAGE", torch.rand(1, 32, 80, 3)),
              "tile_mode": "tiles", "enhance_ratio": 1.0, "enhance_tiles": 2, "sharpening": 0.0, "batch_size": 8}
    inputs.update(over)
    return _graph(w, "EncodeImagePromptTiled", inputs)


def _tiled_prompt(w):
    p = w["prompt"]
    return ("IMAGE_PROMPT", type(p)(p.embeds, p.hidden, p.uncond_embeds, p.uncond_hidden,
                                    regions=torch.ones(p.count, 8, 8)))


def _regional(w, **over):
    half = torch.zeros(1, 16, 16)
    half[:, :, :8] = 1.0
    inputs = {"model": ("MODEL", w["model"]), "ipadapter": ("IPADAPTER", w["adapter"]),
              "positive": ("CONDITIONING", [[torch.zeros(1, 5, CTX), {}]]),
              "negative": ("CONDITIONING", [[torch.zeros(1, 5, CTX), {}]]), "weight": 1.0, "prompt_weight": 1.0,
              "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only",
              "image_prompt_1": ("IMAGE_PROMPT", w["prompt"]), "mask_1": ("MASK", half)}
    inputs.update(over)
    return _graph(w, "IPAdapterRegionalPrompt", {k: v for k, v in inputs.items() if v is not None})


def _combine(w, method="weighted average", weights="1, 1, 1, 1", second=None):
    second = w["prompt"] if second is None else second
    return _graph(w, "CombineImagePrompts", {"image_prompt": ("IMAGE_PROMPT", w["prompt"]), "method": method,
                                             "weights": weights, "image_prompt_2": ("IMAGE_PROMPT", second)})


def _noise(w, **over):
    inputs = {"kind": "fade", "strength": 0.6, "seed": 0}
    inputs.update(over)
    return _graph(w, "ImagePromptNoise", inputs)


def _save(w, prefix):
    return _graph(w, "SaveImagePrompt", {"image_prompt": ("IMAGE_PROMPT", w["prompt"]), "filename_prefix": prefix},
                  keep=False)


def _load_prompt(w, name):
    return _graph(w, "LoadImagePrompt", {"prompt_file": name})


def _frame_weights(w, **over):
    inputs = {"weights": "1.0, 0.0", "timing": "linear", "frames": 16, "start_frame": 0, "end_frame": 9999}
    inputs.update(over)
    return _graph(w, "IPAdapterFrameWeights", inputs)


def _schedule(*values):
    from ipadapter_suite.ipadapter_core import FrameWeights
    return ("IPADAPTER_FRAME_WEIGHTS", FrameWeights(tuple(values)))


def _crossfade(w, **over):
    inputs = {"image": ("IMAGE", torch.rand(3, 16, 16, 3)), "frame_weights": _schedule(1.0, 0.5, 0.0),
              "method": "shift batches", "add_starting_frames": 0, "add_ending_frames": 0}
    inputs.update(over)
    return _graph(w, "IPAdapterCrossfadeBatches", inputs)


def _nan_mask():
    mask = torch.ones(16, 16)
    mask[2, 3] = NAN
    return mask


# --------------------------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Case:
    id: str
    bad: Callable  # world -> graph
    good: Callable  # world -> the corrected graph, which must then run
    phase: str  # "validation": refused before anything runs; "execution": refused when the node runs
    needles: tuple  # the message names these (the input, the problem, the fix)


CASES = [
    # Load IP-Adapter: the file
    Case("adapter file with NaN in the projection", lambda w: _load(w, "nan_proj.safetensors"),
         lambda w: _load(w, "good.safetensors"), "execution",
         ("nan_proj.safetensors", "image_proj.proj.weight", f"has {2 * EMBED} NaN/Inf", "another copy")),
    Case("adapter file with Inf in a to_v_ip", lambda w: _load(w, "inf_layer.safetensors"),
         lambda w: _load(w, "good.safetensors"), "execution",
         ("inf_layer.safetensors", "ip_adapter.7.to_v_ip.weight", "has 64 NaN/Inf")),  # layer 7: 64 wide
    Case("adapter file with an integer tensor", lambda w: _load(w, "int_dtype.safetensors"),
         lambda w: _load(w, "good.safetensors"), "execution", ("ip_adapter.1.to_k_ip.weight", "torch.int64")),
    Case("adapter file with a bool tensor", lambda w: _load(w, "bool_dtype.safetensors"),
         lambda w: _load(w, "good.safetensors"), "execution", ("image_proj.norm.bias", "torch.bool")),
    Case("truncated adapter file", lambda w: _load(w, "truncated.safetensors"),
         lambda w: _load(w, "good.safetensors"), "execution", ("truncated.safetensors", "truncated", "again")),
    Case("a CLIP vision file as adapter", lambda w: _load(w, "clip_vision_file.safetensors"),
         lambda w: _load(w, "good.safetensors"), "execution", ("not an IP-Adapter", "CLIP vision")),
    Case("a faceid_variant the file contradicts", lambda w: _load(w, "faceid.safetensors", faceid_variant="plus v2"),
         lambda w: _load(w, "faceid.safetensors", faceid_variant="auto"), "execution",
         ("faceid_variant 'plus v2'", "a FaceID file", "set faceid_variant to 'auto'")),
    Case("a faceid_variant for a CLIP adapter", lambda w: _load(w, "good.safetensors", faceid_variant="portrait"),
         lambda w: _load(w, "good.safetensors"), "execution", ("for FaceID files", "'auto'")),
    Case("an unknown faceid_variant", lambda w: _load(w, "faceid.safetensors", faceid_variant="v3"),
         lambda w: _load(w, "faceid.safetensors"), "validation", ("faceid_variant", "'v3'")),
    Case("a .bin file holding code", lambda w: _load(w, "code.bin"),
         lambda w: _load(w, "good.safetensors"), "execution", ("code.bin", "holds code instead of tensors")),
    Case("an XLabs Flux file lacking a block's tensor", lambda w: _load(w, "flux_incomplete.safetensors"),
         lambda w: _load(w, "flux_xlabs.safetensors"), "execution",
         ("flux_incomplete.safetensors", "double block 7 lacks k.bias", "download it again")),
    Case("an InstantX FLUX.1-dev file lacking a block's tensor", lambda w: _load(w, "instantx_incomplete.safetensors"),
         lambda w: _load(w, "instantx_flux.safetensors"), "execution",
         ("instantx_incomplete.safetensors", "incomplete or missing: [40]", "the file is incomplete")),
    Case("a Flux adapter on an SD1.5 model", lambda w: _apply(w, ipadapter=("IPADAPTER", w["flux_adapter"])),
         _apply, "execution", ("for Flux models", "UNetModel", "Load a Flux checkpoint")),
    Case("an adapter name not in models/ipadapter", lambda w: _load(w, "missing.safetensors"),
         lambda w: _load(w, "good.safetensors"), "validation", ("ipadapter_name", "missing.safetensors")),
    # Encode Image Prompt: images, encoder, numbers
    Case("empty IMAGE batch", lambda w: _encode(w, image=("IMAGE", torch.zeros(0, 32, 32, 3))),
         _encode, "execution", ("image", "empty batch", "at least one image")),
    Case("NaN pixels in the reference", lambda w: _encode(w, image=("IMAGE", torch.rand(2, 32, 32, 3).index_fill(
        1, torch.tensor([4]), NAN))), _encode, "execution", ("image has", "NaN/Inf pixel", "image 0")),
    Case("Inf pixels in the negative image", lambda w: _encode(w, negative_image=(
        "IMAGE", torch.full((1, 32, 32, 3), INF))), lambda w: _encode(w, negative_image=(
            "IMAGE", torch.rand(1, 32, 32, 3))), "execution", ("negative_image", "NaN/Inf")),
    Case("not an image (wrong shape)", lambda w: _encode(w, image=("IMAGE", torch.rand(32, 32, 3))),
         _encode, "execution", ("image", "(B, H, W, 3)")),
    Case("negative images not matching the references", lambda w: _encode(w, image=(
        "IMAGE", torch.rand(3, 32, 32, 3)), negative_image=("IMAGE", torch.rand(2, 32, 32, 3))), _encode,
         "execution", ("negative_image has 2 images for 3", "one per reference")),
    Case("batch_size 0", lambda w: _encode(w, batch_size=0), _encode, "validation", ("batch_size is 0", "1 to 256")),
    Case("batch_size above the widget's range", lambda w: _encode(w, batch_size=257), _encode, "validation",
         ("batch_size is 257", "1 to 256")),
    Case("batch_size linked from a script, out of range", lambda w: _encode(w, batch_size=("INT", -3)), _encode,
         "execution", ("batch_size is -3", "1 to 256")),
    Case("unknown fit", lambda w: _encode(w, fit="stretch"), _encode, "validation", ("fit", "stretch")),
    Case("unknown interpolation", lambda w: _encode(w, interpolation="box"), _encode, "validation",
         ("interpolation", "'box'", "lanczos")),
    Case("sharpening beyond 1", lambda w: _encode(w, sharpening=1.5), _encode, "validation",
         ("sharpening is 1.5", "outside 0.0…1.0")),
    Case("sharpening NaN, linked", lambda w: _encode(w, sharpening=("FLOAT", NAN)), _encode, "execution",
         ("sharpening is nan", "finite")),
    # Apply IP-Adapter: numbers, masks, pairings
    Case("weight NaN in an API graph", lambda w: _apply(w, weight=NAN), _apply, "validation",
         ("weight is nan", "finite")),
    Case("weight Inf from a linked node", lambda w: _apply(w, weight=("FLOAT", INF)), _apply, "execution",
         ("weight is inf", "finite")),
    Case("weight beyond its range", lambda w: _apply(w, weight=5.5), lambda w: _apply(w, weight=5.0),
         "validation", ("weight is 5.5", "outside -2.0…5.0")),
    Case("weight below its range, linked", lambda w: _apply(w, weight=("FLOAT", -2.5)),
         lambda w: _apply(w, weight=("FLOAT", -2.0)), "execution", ("weight is -2.5", "outside")),
    Case("start_at NaN", lambda w: _apply(w, start_at=NAN), _apply, "validation", ("start_at is nan",)),
    Case("end_at beyond 1", lambda w: _apply(w, end_at=1.5), _apply, "validation", ("end_at is 1.5",)),
    Case("start_at after end_at", lambda w: _apply(w, start_at=0.8, end_at=0.2),
         lambda w: _apply(w, start_at=0.2, end_at=0.8), "execution", ("start_at 0.8 is after end_at 0.2", "swap")),
    Case("attn_mask with NaN", lambda w: _apply(w, attn_mask=("MASK", _nan_mask())),
         lambda w: _apply(w, attn_mask=("MASK", torch.ones(16, 16))), "execution", ("attn_mask has 1 NaN/Inf",)),
    Case("empty attn_mask", lambda w: _apply(w, attn_mask=("MASK", torch.zeros(0, 16, 16))),
         lambda w: _apply(w, attn_mask=("MASK", torch.ones(1, 16, 16))), "execution", ("attn_mask is empty",)),
    Case("image prompt of another encoder", lambda w: _apply(w, image_prompt=("IMAGE_PROMPT", w["other_prompt"])),
         _apply, "execution", ("encoded with", "Load CLIP Vision", "encode the image again")),
    Case("adapter for another model", lambda w: _apply(w, ipadapter=("IPADAPTER", w["other_adapter"])),
         _apply, "execution", ("other_model.safetensors", "cross-attention width", "Use an IP-Adapter for this model")),
    Case("a FaceID adapter with a CLIP image prompt", lambda w: _faceid_apply(w, image_prompt=(
        "IMAGE_PROMPT", w["prompt"])), _faceid_apply, "execution", ("got a CLIP image prompt", "Encode Face Prompt")),
    Case("FaceID Plus with a face prompt without crops", lambda w: _faceid_apply(
        w, ipadapter=("IPADAPTER", w["faceid_plus"])), lambda w: _faceid_apply(
        w, ipadapter=("IPADAPTER", w["faceid_plus"]), image_prompt=("IMAGE_PROMPT", w["face_prompt_crops"])),
         "execution", ("FaceID plus v2", "connect Load CLIP Vision", "Encode Face Prompt's clip_vision")),
    Case("a CLIP adapter with a face prompt", lambda w: _apply(w, image_prompt=("IMAGE_PROMPT", w["face_prompt"])),
         _apply, "execution", ("got a face prompt", "Encode Image Prompt")),
    Case("lora_strength NaN", lambda w: _faceid_apply(w, lora_strength=NAN), _faceid_apply, "validation",
         ("lora_strength is nan", "finite")),
    Case("shortcut_weight Inf, linked", lambda w: _faceid_apply(w, shortcut_weight=("FLOAT", INF)),
         lambda w: _faceid_apply(w, shortcut_weight=("FLOAT", 1.5)), "execution", ("shortcut_weight is inf",)),
    Case("lora_strength beyond its range (Advanced)", lambda w: _advanced(w, lora_strength=9.0),
         lambda w: _advanced(w, lora_strength=0.5), "validation", ("lora_strength is 9.0", "outside")),
    # Load Face Analysis / Encode Face Prompt
    Case("a model pack not in models/insightface", lambda w: _graph(w, "LoadFaceAnalysis", {
        "model_pack": "buffalo_x", "backend": "onnxruntime", "det_size": 640}), lambda w: _encode_face(w),
         "validation", ("model_pack", "buffalo_x", "models/insightface/models/")),
    Case("no face in any reference image", lambda w: _encode_face(w, face_analysis=("FACE_ANALYSIS", _NoFaces())),
         _encode_face, "execution", ("no usable face in any of the 2 image(s)", "image 1: no face found")),
    Case("a face_index beyond the faces found", lambda w: _encode_face(w, face="index", face_index=3),
         lambda w: _encode_face(w, face="index", face_index=0), "execution", ("none at face_index 3",)),
    Case("max_faces 0", lambda w: _encode_face(w, max_faces=0), _encode_face, "validation", ("max_faces",)),
    Case("an unknown face choice", lambda w: _encode_face(w, face="smallest"), _encode_face, "validation",
         ("face", "'smallest'", "pick one")),
    Case("NaN pixels in the face image", lambda w: _encode_face(w, image=("IMAGE", torch.full((1, 32, 32, 3), NAN))),
         _encode_face, "execution", ("image has", "NaN/Inf")),
    Case("image prompt with NaN (from a script)", lambda w: _apply(w, image_prompt=("IMAGE_PROMPT", _nan_prompt(w))),
         _apply, "execution", ("image_prompt", "NaN/Inf", "encode the images again")),
    # Apply IP-Adapter (Advanced): the layer weights text and the rest
    Case("custom layer weights with a word", lambda w: _advanced(w, layer_weights="custom",
                                                                  custom_layer_weights="1, x"),
         lambda w: _advanced(w, layer_weights="custom", custom_layer_weights="input 1=1"), "validation",
         ("custom_layer_weights", "'x' is not a number")),
    Case("custom layer weights of the wrong count", lambda w: _advanced(w, layer_weights="custom",
                                                                         custom_layer_weights="1, 1, 1"),
         lambda w: _advanced(w, layer_weights="custom", custom_layer_weights=", ".join(["1"] * 16)), "execution",
         ("custom_layer_weights lists 3 numbers", "16 layers")),
    Case("custom layer weights naming no layer", lambda w: _advanced(w, layer_weights="custom",
                                                                      custom_layer_weights="input 99=1"),
         lambda w: _advanced(w, layer_weights="custom", custom_layer_weights="input 1=1"), "execution",
         ("'input 99' names no layer",)),
    Case("custom layer weights with inf", lambda w: _advanced(w, layer_weights="custom",
                                                               custom_layer_weights="output 1=inf"),
         lambda w: _advanced(w, layer_weights="custom", custom_layer_weights="output 3=1"), "validation",
         ("custom_layer_weights", "not a finite number")),
    Case("composition_weight NaN", lambda w: _advanced(w, composition_weight=NAN), _advanced, "validation",
         ("composition_weight is nan",)),
    Case("unknown layer preset", lambda w: _advanced(w, layer_weights="strongest"), _advanced, "validation",
         ("layer_weights", "strongest")),
    Case("unknown embeds_scaling", lambda w: _advanced(w, embeds_scaling="Q only"), _advanced, "validation",
         ("embeds_scaling", "'Q only'", "pick one")),
    Case("a tiled prompt with unfold_batch", lambda w: _advanced(w, image_prompt=_tiled_prompt(w),
                                                                  unfold_batch=True),
         lambda w: _advanced(w, image_prompt=_tiled_prompt(w)), "execution",
         ("image_prompt holds tiles", "turn unfold_batch off")),
    # Encode Image Prompt (Tiled)
    Case("unknown tile_mode", lambda w: _tiled(w, tile_mode="grid"), _tiled, "validation",
         ("tile_mode", "'grid'", "enhancer")),
    Case("enhance_ratio beyond 1", lambda w: _tiled(w, enhance_ratio=1.5), _tiled, "validation",
         ("enhance_ratio is 1.5", "outside 0.0…1.0")),
    Case("enhance_tiles 1", lambda w: _tiled(w, tile_mode="enhancer", enhance_tiles=1),
         lambda w: _tiled(w, tile_mode="enhancer"), "validation", ("enhance_tiles is 1", "2 to 16")),
    Case("enhance_ratio NaN, linked", lambda w: _tiled(w, enhance_ratio=("FLOAT", NAN)), _tiled, "execution",
         ("enhance_ratio is nan",)),
    Case("NaN pixels in a tiled reference", lambda w: _tiled(w, image=("IMAGE", torch.full((1, 32, 80, 3), NAN))),
         _tiled, "execution", ("image has", "NaN/Inf pixel")),
    # IP-Adapter Regional Prompt
    Case("regional prompt_weight NaN", lambda w: _regional(w, prompt_weight=NAN), _regional, "validation",
         ("prompt_weight is nan",)),
    Case("regional prompt_weight beyond 10", lambda w: _regional(w, prompt_weight=11.0), _regional, "validation",
         ("prompt_weight is 11.0", "outside 0.0…10.0")),
    Case("a region without its mask", lambda w: _regional(w, mask_1=None), _regional, "execution",
         ("region 1", "no mask", "connect mask_1")),
    Case("no region at all", lambda w: _regional(w, image_prompt_1=None, mask_1=None), _regional, "execution",
         ("no region", "connect image_prompt_1 and mask_1")),
    Case("a region mask with NaN", lambda w: _regional(w, mask_1=("MASK", _nan_mask())), _regional, "execution",
         ("mask_1 has 1 NaN/Inf",)),
    # Apply IP-Adapter (Style & Composition)
    Case("weight_style NaN", lambda w: _style_composition(w, weight_style=NAN), _style_composition, "validation",
         ("weight_style is nan", "finite")),
    Case("weight_composition beyond its range", lambda w: _style_composition(w, weight_composition=7.0),
         _style_composition, "validation", ("weight_composition is 7.0", "outside")),
    Case("weight_composition Inf, linked", lambda w: _style_composition(w, weight_composition=("FLOAT", INF)),
         _style_composition, "execution", ("weight_composition is inf",)),
    Case("style & composition start_at after end_at", lambda w: _style_composition(w, start_at=0.9, end_at=0.1),
         _style_composition, "execution", ("start_at 0.9 is after end_at 0.1", "swap")),
    Case("unknown embeds_scaling (style & composition)", lambda w: _style_composition(w, embeds_scaling="V"),
         _style_composition, "validation", ("embeds_scaling", "'V'")),
    Case("composition prompt with NaN (from a script)", lambda w: _style_composition(
        w, image_prompt_composition=("IMAGE_PROMPT", _nan_prompt(w))), _style_composition, "execution",
         ("image_prompt_composition", "NaN/Inf", "encode the images again")),
    Case("style prompt of another encoder", lambda w: _style_composition(
        w, image_prompt_style=("IMAGE_PROMPT", w["other_prompt"])), _style_composition, "execution",
         ("encoded with", "Load CLIP Vision")),
    Case("style & composition mask with NaN", lambda w: _style_composition(w, attn_mask=("MASK", _nan_mask())),
         lambda w: _style_composition(w, attn_mask=("MASK", torch.ones(16, 16))), "execution",
         ("attn_mask has 1 NaN/Inf",)),
    Case("frame_weights with NaN (from a script)", lambda w: _advanced(w, frame_weights=_schedule(1.0, NAN)),
         lambda w: _advanced(w, frame_weights=_schedule(1.0, 0.5)), "execution",
         ("frame_weights (frame 1) is nan", "finite number")),
    Case("frame_weights that are not a schedule", lambda w: _advanced(w, frame_weights=(
        "IPADAPTER_FRAME_WEIGHTS", {"weights": [1.0]})), lambda w: _advanced(w, frame_weights=_schedule(1.0)),
         "execution", ("frame_weights: expected IP-Adapter frame weights, got dict", "IP-Adapter Frame Weights")),
    Case("empty frame_weights (from a script)", lambda w: _advanced(w, frame_weights=_schedule()),
         lambda w: _advanced(w, frame_weights=_schedule(0.5)), "execution", ("frame_weights is empty",)),
    # IP-Adapter Frame Weights and Crossfade Batches
    Case("frame weights that are not numbers", lambda w: _frame_weights(w, weights="1, x"), _frame_weights,
         "validation", ("weights: 'x' is not a number", "e.g.")),
    Case("empty frame weights", lambda w: _frame_weights(w, weights=" "), _frame_weights, "validation",
         ("weights is empty", "first and last weights")),
    Case("a frame weight out of range", lambda w: _frame_weights(w, weights="1, 9"), _frame_weights, "validation",
         ("weights is 9.0, outside", "in that range")),
    Case("a curve starting after its end", lambda w: _frame_weights(w, start_frame=20), _frame_weights,
         "validation", ("start_frame 20 is not before end_frame 16", "lower start_frame")),
    Case("unknown frame weights timing", lambda w: _frame_weights(w, timing="bounce"), _frame_weights,
         "validation", ("timing", "'bounce'", "pick one")),
    Case("crossfade of one image", lambda w: _crossfade(w, image=("IMAGE", torch.rand(1, 16, 16, 3))), _crossfade,
         "execution", ("image", "needs at least 2 images", "full batch")),
    Case("crossfade of an empty batch", lambda w: _crossfade(w, image=("IMAGE", torch.zeros(0, 16, 16, 3))),
         _crossfade, "execution", ("image is an empty batch",)),
    Case("crossfade weights with Inf (from a script)", lambda w: _crossfade(w, frame_weights=_schedule(INF, 0.0)),
         _crossfade, "execution", ("frame_weights (frame 0) is inf",)),
    Case("unknown crossfade method", lambda w: _crossfade(w, method="sideways"), _crossfade, "validation",
         ("method", "'sideways'", "pick one")),
    # Combine Image Prompts: the weights text, the pairing
    Case("weights that are not numbers", lambda w: _combine(w, weights="a,b"), _combine, "validation",
         ("weights: 'a' is not a number", "separated by commas", "e.g.")),
    Case("weights of the wrong count", lambda w: _combine(w, weights="1, 2"), _combine, "execution",
         ("weights", "got 2 for 4 images", "give 4 numbers")),
    Case("weights summing to 0", lambda w: _combine(w, weights="1, -1, 1, -1"), _combine, "execution",
         ("weights sum to 0",)),
    Case("weights with NaN", lambda w: _combine(w, weights="1, nan, 1, 1"), _combine, "validation",
         ("weights: 'nan' is not a finite number",)),
    Case("unknown combine method", lambda w: _combine(w, method="median"), _combine, "validation",
         ("method", "'median'", "norm average")),
    Case("prompts of two encoders", lambda w: _combine(w, method="concat", second=w["other_prompt"]),
         lambda w: _combine(w, method="concat"), "execution", ("different CLIP vision models",)),
    # Image Prompt Noise
    Case("noise strength beyond 1", lambda w: _noise(w, strength=1.5), _noise, "validation", ("strength is 1.5",)),
    Case("noise strength NaN", lambda w: _noise(w, strength=NAN), _noise, "validation", ("strength is nan",)),
    Case("noise of an empty batch", lambda w: _noise(w, image=("IMAGE", torch.zeros(0, 8, 8, 3))), _noise,
         "execution", ("image is an empty batch",)),
    # Save / Load Image Prompt
    Case("empty filename_prefix", lambda w: _save(w, "  "), lambda w: _save(w, "ok"), "validation",
         ("filename_prefix is empty",)),
    Case("filename_prefix leaving the folder", lambda w: _save(w, "../../escape"), lambda w: _save(w, "sub/ok"),
         "validation", ("leaves output/image_prompts/", "without '..'")),
    Case("truncated saved prompt", lambda w: _load_prompt(w, "image_prompts/truncated.safetensors"),
         lambda w: _load_prompt(w, "image_prompts/good.safetensors"), "execution",
         ("truncated.safetensors", "truncated or corrupt", "save it again")),
    Case("saved prompt with NaN", lambda w: _load_prompt(w, "image_prompts/nan.safetensors"),
         lambda w: _load_prompt(w, "image_prompts/good.safetensors"), "execution", ("nan.safetensors", "embeds",
                                                                                    "NaN/Inf")),
    Case("a foreign file as saved prompt", lambda w: _load_prompt(w, "image_prompts/foreign.safetensors"),
         lambda w: _load_prompt(w, "image_prompts/good.safetensors"), "execution", ("not a saved image prompt",)),
    Case("a saved prompt name that does not exist", lambda w: _load_prompt(w, "image_prompts/none.safetensors"),
         lambda w: _load_prompt(w, "image_prompts/good.safetensors"), "validation", ("prompt_file",)),
]


def _nan_prompt(w):
    p = w["prompt"]
    hidden = p.hidden.clone()
    hidden[0, 1, 2] = NAN
    return type(p)(p.embeds, hidden, p.uncond_embeds, p.uncond_hidden)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_a_clear_message_and_the_graph_still_runs(world, case):
    runner = world["runner"]
    result = runner.run(case.bad(world))
    if case.phase == "validation":
        assert not result.valid, "expected the host's validation to refuse the graph"
    else:
        assert result.valid, f"refused at validation instead of execution: {result.message}"
        assert result.error is not None, "expected the node to refuse its input"
        assert result.error_type.split(".")[-1] in {"InputError", "AdapterFileError", "UnsupportedAdapterError",
                                                    "EncoderMismatchError", "ModelMismatchError", "IPAdapterError"}
    message = result.message
    assert "\n" not in message.strip() and len(message) < 400, message
    for needle in case.needles:
        assert needle in message, f"{needle!r} not in: {message}"
    fixed = runner.run(case.good(world))
    assert fixed.valid and fixed.error is None, fixed.message


def test_weights_at_the_ends_of_their_ranges_are_accepted(world):
    for weight, start, end in ((-2.0, 0.0, 1.0), (5.0, 0.0, 1.0), (1.0, 0.5, 0.5), (1.0, 1.0, 1.0)):
        result = world["runner"].run(_apply(world, weight=weight, start_at=start, end_at=end))
        assert result.valid and result.error is None, (weight, start, end, result.message)
        assert result.outputs["out"] is not world["model"]  # a patched clone, never the input model
    assert not (world["root"] / "pwned").exists()
