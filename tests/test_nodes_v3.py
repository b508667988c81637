"""The nodes on the host's V3 schema: the public surface saved graphs rely on (ids, input names, socket types,
widget order, outputs) written out here independently, the pinned API version, the host's entry point, and the
change fingerprints (a file saved again under the same name is read again by a caching executor)."""
import asyncio

import pytest
import torch

from conftest import HOST, NO_HOST_REASON

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)

# node id -> (display name, [(input, socket type, required)] in widget/socket order, output types)
PUBLIC = {
    "LoadIPAdapter": ("Load IP-Adapter", [("ipadapter_name", "COMBO", True), ("faceid_variant", "COMBO", False)],
                      ["IPADAPTER"]),
    "EncodeImagePrompt": ("Encode Image Prompt", [
        ("clip_vision", "CLIP_VISION", True), ("image", "IMAGE", True), ("negative_image", "IMAGE", False),
        ("fit", "COMBO", False), ("batch_size", "INT", False), ("interpolation", "COMBO", False),
        ("sharpening", "FLOAT", False)], ["IMAGE_PROMPT"]),
    "EncodeImagePromptTiled": ("Encode Image Prompt (Tiled)", [
        ("clip_vision", "CLIP_VISION", True), ("image", "IMAGE", True), ("tile_mode", "COMBO", True),
        ("enhance_ratio", "FLOAT", True), ("enhance_tiles", "INT", True), ("sharpening", "FLOAT", True),
        ("batch_size", "INT", True), ("negative_image", "IMAGE", False)], ["IMAGE_PROMPT", "MASK", "IMAGE"]),
    "IPAdapterRegionalPrompt": ("IP-Adapter Regional Prompt", [
        ("model", "MODEL", True), ("ipadapter", "IPADAPTER", True), ("positive", "CONDITIONING", True),
        ("negative", "CONDITIONING", True), ("weight", "FLOAT", True), ("prompt_weight", "FLOAT", True),
        ("start_at", "FLOAT", True), ("end_at", "FLOAT", True), ("embeds_scaling", "COMBO", True),
        *((f"{name}_{i}", kind, False) for i in range(1, 5) for name, kind in (
            ("image_prompt", "IMAGE_PROMPT"), ("mask", "MASK"), ("text", "CONDITIONING")))],
        ["MODEL", "CONDITIONING", "CONDITIONING"]),
    "ApplyIPAdapter": ("Apply IP-Adapter", [
        ("model", "MODEL", True), ("ipadapter", "IPADAPTER", True), ("image_prompt", "IMAGE_PROMPT", True),
        ("weight", "FLOAT", True), ("start_at", "FLOAT", True), ("end_at", "FLOAT", True),
        ("attn_mask", "MASK", False), ("lora_strength", "FLOAT", False), ("shortcut_weight", "FLOAT", False)],
        ["MODEL"]),
    "ApplyIPAdapterAdvanced": ("Apply IP-Adapter (Advanced)", [
        ("model", "MODEL", True), ("ipadapter", "IPADAPTER", True), ("image_prompt", "IMAGE_PROMPT", True),
        ("weight", "FLOAT", True), ("start_at", "FLOAT", True), ("end_at", "FLOAT", True),
        ("layer_weights", "COMBO", True), ("composition_weight", "FLOAT", True),
        ("custom_layer_weights", "STRING", True), ("weight_curve", "COMBO", True), ("unfold_batch", "BOOLEAN", True),
        ("attn_mask", "MASK", False), ("frame_weights", "IPADAPTER_FRAME_WEIGHTS", False),
        ("embeds_scaling", "COMBO", False), ("lora_strength", "FLOAT", False), ("shortcut_weight", "FLOAT", False)],
        ["MODEL"]),
    "ApplyIPAdapterStyleComposition": ("Apply IP-Adapter (Style & Composition)", [
        ("model", "MODEL", True), ("ipadapter", "IPADAPTER", True), ("image_prompt_style", "IMAGE_PROMPT", True),
        ("image_prompt_composition", "IMAGE_PROMPT", True), ("weight_style", "FLOAT", True),
        ("weight_composition", "FLOAT", True), ("expand_style", "BOOLEAN", True), ("start_at", "FLOAT", True),
        ("end_at", "FLOAT", True), ("embeds_scaling", "COMBO", True), ("attn_mask", "MASK", False)], ["MODEL"]),
    "CombineImagePrompts": ("Combine Image Prompts", [
        ("image_prompt", "IMAGE_PROMPT", True), ("method", "COMBO", True), ("weights", "STRING", True),
        ("image_prompt_2", "IMAGE_PROMPT", False), ("image_prompt_3", "IMAGE_PROMPT", False),
        ("image_prompt_4", "IMAGE_PROMPT", False), ("image_prompt_5", "IMAGE_PROMPT", False)], ["IMAGE_PROMPT"]),
    "ImagePromptNoise": ("Image Prompt Noise", [
        ("kind", "COMBO", True), ("strength", "FLOAT", True), ("seed", "INT", True), ("image", "IMAGE", False)],
        ["IMAGE"]),
    "SaveImagePrompt": ("Save Image Prompt", [("image_prompt", "IMAGE_PROMPT", True),
                                              ("filename_prefix", "STRING", True)], []),
    "LoadImagePrompt": ("Load Image Prompt", [("prompt_file", "COMBO", True)], ["IMAGE_PROMPT"]),
    "IPAdapterFrameWeights": ("IP-Adapter Frame Weights", [
        ("weights", "STRING", True), ("timing", "COMBO", True), ("frames", "INT", True), ("start_frame", "INT", True),
        ("end_frame", "INT", True)], ["IPADAPTER_FRAME_WEIGHTS", "IPADAPTER_FRAME_WEIGHTS", "INT"]),
    "IPAdapterCrossfadeBatches": ("IP-Adapter Crossfade Batches", [
        ("image", "IMAGE", True), ("frame_weights", "IPADAPTER_FRAME_WEIGHTS", True), ("method", "COMBO", True),
        ("add_starting_frames", "INT", True), ("add_ending_frames", "INT", True)],
        ["IPADAPTER_FRAME_WEIGHTS", "IPADAPTER_FRAME_WEIGHTS", "IMAGE", "IMAGE", "INT"]),
    "LoadIPAdapterByPreset": ("Load IP-Adapter (by contents)", [
        ("model", "MODEL", True), ("preset", "COMBO", True), ("ipadapter_name", "COMBO", False)],
        ["MODEL", "IPADAPTER", "CLIP_VISION"]),
    "LoadFaceAnalysis": ("Load Face Analysis", [("model_pack", "COMBO", True), ("backend", "COMBO", True),
                                                ("det_size", "INT", True)], ["FACE_ANALYSIS"]),
    "EncodeFacePrompt": ("Encode Face Prompt", [
        ("face_analysis", "FACE_ANALYSIS", True), ("image", "IMAGE", True), ("clip_vision", "CLIP_VISION", False),
        ("face", "COMBO", False), ("face_index", "INT", False), ("max_faces", "INT", False)], ["IMAGE_PROMPT"]),
}


def _inputs(info):
    order = info["input_order"]
    return [(name, info["input"][section][name][0], section == "required")
            for section in ("required", "optional") for name in order.get(section, [])]


def test_public_surface_is_unchanged(ext):
    from comfy_api.latest import io
    mappings = ext.nodes.NODE_CLASS_MAPPINGS
    assert set(mappings) == set(PUBLIC)
    for node_id, (display, inputs, outputs) in PUBLIC.items():
        cls = mappings[node_id]
        assert issubclass(cls, io.ComfyNode), node_id
        info = cls.GET_NODE_INFO_V1()
        assert info["display_name"] == display and info["category"] == "ipadapter"
        assert _inputs(info) == inputs, node_id
        assert list(info["output"]) == outputs, node_id
    assert mappings["SaveImagePrompt"].GET_NODE_INFO_V1()["output_node"] is True
    for node_id, name, options, default in OPTIONS:
        spec = _spec(mappings[node_id].GET_NODE_INFO_V1(), name)
        assert (spec[1]["options"], spec[1].get("default")) == (options, default), (node_id, name)


# Option lists other graphs (and the workflow converter) rely on, written out: (node, input, options, default).
SCALINGS = ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]
OPTIONS = [
    ("EncodeImagePromptTiled", "tile_mode", ["tiles", "enhancer"], "tiles"),
    ("EncodeImagePrompt", "interpolation", ["bicubic", "lanczos", "bilinear", "nearest"], "bicubic"),
    ("ApplyIPAdapterAdvanced", "embeds_scaling", SCALINGS, "V only"),
    ("ApplyIPAdapterStyleComposition", "embeds_scaling", SCALINGS, "V only"),
    ("CombineImagePrompts", "method", ["concat", "average", "weighted average", "add", "subtract", "norm average",
                                       "max", "min"], "concat"),
    ("ApplyIPAdapterAdvanced", "layer_weights", [
        "linear", "ease in", "ease out", "ease in-out", "style transfer", "composition", "style and composition",
        "custom", "ease in (incumbent)", "ease out (incumbent)", "ease in-out (incumbent)", "reverse in-out",
        "weak input", "weak middle", "weak output", "strong middle", "strong style transfer",
        "strong style and composition", "style transfer precise", "composition precise"], "linear"),
]


def _spec(info, name):
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return info["input"][section][name]
    raise KeyError(name)


def test_nodes_pin_the_versioned_api(ext):
    import comfy_api.v0_0_2
    assert ext.nodes.sockets.io is comfy_api.v0_0_2.io
    text = open(ext.nodes.sockets.__file__, encoding="utf-8").read()
    assert "comfy_api.v0_0_2" in text and "comfy_api.latest" not in text


def test_entry_point_gives_every_node(ext):
    from comfy_api.latest import ComfyExtension
    extension = asyncio.run(ext.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    nodes = asyncio.run(extension.get_node_list())
    assert {n.GET_SCHEMA().node_id for n in nodes} == set(PUBLIC)


def test_a_prompt_saved_again_under_the_same_name_is_read_again(ext, tmp_path):
    """The executor caches outputs by inputs + fingerprint: same file name, new contents -> new output."""
    import folder_paths
    import graph_runner
    from tiny_adapters import random_prompt
    graph_runner.register(ext.nodes.NODE_CLASS_MAPPINGS)
    saved = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        (tmp_path / "image_prompts").mkdir()
        path = tmp_path / "image_prompts" / "p.safetensors"
        graph = {"1": {"class_type": "LoadImagePrompt", "inputs": {"prompt_file": "image_prompts/p.safetensors"}},
                 "2": {"class_type": "Keep", "inputs": {"value": ["1", 0], "slot": "out"}}}
        seen = []
        for seed in (1, 2):
            prompt = random_prompt(ext, 1, seed)
            ext.ipadapter_core.save_image_prompt(path, prompt)
            result = graph_runner.run(graph)
            assert result.error is None, result.message
            seen.append(result.outputs["out"].embeds)
            assert torch.equal(seen[-1], prompt.embeds)
        assert not torch.equal(seen[0], seen[1])
    finally:
        folder_paths.set_input_directory(saved)


def test_a_saved_prompt_linked_from_outside_input_is_read_or_refused_by_name(ext, tmp_path):
    """A saved prompt in input/image_prompts that is a link to a file elsewhere: a host that refuses paths
    resolving outside input/ (``folder_paths.is_within_directory``) gets our message naming the file and the fix,
    not its bare "Invalid file path"; a host without that check reads the file."""
    import folder_paths
    import graph_runner
    from tiny_adapters import random_prompt
    graph_runner.register(ext.nodes.NODE_CLASS_MAPPINGS)
    saved = folder_paths.get_input_directory()
    (tmp_path / "input" / "image_prompts").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    outside = tmp_path / "elsewhere" / "p.safetensors"
    prompt = random_prompt(ext, 1, 3)
    ext.ipadapter_core.save_image_prompt(outside, prompt)
    (tmp_path / "input" / "image_prompts" / "p.safetensors").symlink_to(outside)
    folder_paths.set_input_directory(str(tmp_path / "input"))
    try:
        result = graph_runner.run({
            "1": {"class_type": "LoadImagePrompt", "inputs": {"prompt_file": "image_prompts/p.safetensors"}},
            "2": {"class_type": "Keep", "inputs": {"value": ["1", 0], "slot": "out"}}})
    finally:
        folder_paths.set_input_directory(saved)
    if hasattr(folder_paths, "is_within_directory"):
        assert result.error is not None and "Invalid file path" not in result.message
        assert "'image_prompts/p.safetensors' resolves outside" in result.message
        assert "copy the file into input/image_prompts/" in result.message
    else:
        assert result.error is None, result.message
        assert torch.equal(result.outputs["out"].embeds, prompt.embeds)


def test_an_adapter_file_written_again_is_loaded_again(ext, tmp_path):
    import folder_paths
    import graph_runner
    from parity_models import build_pair
    from tiny_adapters import save_and_load, tiny_adapter
    _, _, info = build_pair("sd15", seed=0)
    graph_runner.register(ext.nodes.NODE_CLASS_MAPPINGS)
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path))
    graph = {"1": {"class_type": "LoadIPAdapter", "inputs": {"ipadapter_name": "retrained.safetensors"}},
             "2": {"class_type": "Keep", "inputs": {"value": ["1", 0], "slot": "out"}}}
    weights = []
    for seed in (1, 2):
        save_and_load(ext, tmp_path, tiny_adapter("base", [w for _, w in info["cross_attn"]], seed),
                      "retrained.safetensors")
        result = graph_runner.run(graph)
        assert result.error is None, result.message
        weights.append(result.outputs["out"].model.image_proj.proj.weight.detach().clone())
    assert not torch.equal(weights[0], weights[1])
