"""tools/convert_workflow.py on the incumbent's own 21 example workflows (read from a copy of
cubiq/ComfyUI_IPAdapter_plus: $IPADAPTER_PLUS_PATH or a folder of the host's custom_nodes; those tests are skipped
with the reason without it) and on small UI- and API-format graphs written here (which need nothing).

* every example converts; links stay consistent at both ends, new ids follow the file's last ones, every node
  that is not the incumbent's is kept as it was (position, widgets, links), what is not converted is reported;
* widget values land on our inputs by name (checked on the examples, against values read off the files here);
* in the real host and front-end: converted graphs use only registered node types, apart from other packs and the
  incumbent nodes reported as kept; those using only core nodes and ours load with no console error, give the same
  API graph in the front-end and in the tests, and run to an image on stand-in files (ipadapter_simple;
  ipadapter_weighted_embeds too with IPADAPTER_SLOW_TESTS=1).
"""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOST, NO_HOST_REASON, REPO
from workflow_format import FRONTEND_ONLY, ordered_inputs, to_api

from tools import incumbent_nodes as data  # the repository's tools/ (conftest puts the repository on sys.path)
from tools.convert_workflow import convert



def incumbent_pack() -> Path | None:
    """ComfyUI_IPAdapter_plus's folder: $IPADAPTER_PLUS_PATH, or a folder of the host's custom_nodes holding it."""
    env = os.environ.get("IPADAPTER_PLUS_PATH")
    custom_nodes = None if HOST is None else Path(HOST) / "custom_nodes"
    folders = [Path(env)] if env else sorted(custom_nodes.iterdir()) if custom_nodes and custom_nodes.is_dir() else []
    return next((f for f in folders if (f / "IPAdapterPlus.py").is_file() and (f / "examples").is_dir()), None)


PACK = incumbent_pack()
EXAMPLES = None if PACK is None else PACK / "examples"
NO_EXAMPLES = ("cubiq/ComfyUI_IPAdapter_plus not found ($IPADAPTER_PLUS_PATH or the host's custom_nodes): its "
               "example workflows are read from it")
NAMES = (sorted(p.stem for p in EXAMPLES.glob("*.json")) if EXAMPLES else
         [pytest.param("examples", marks=pytest.mark.skip(reason=NO_EXAMPLES))])
# The incumbent's NODE_CLASS_MAPPINGS at 9d076a3 (2025-02-26), written out.
INCUMBENT_IDS = """IPAdapter IPAdapterAdvanced IPAdapterBatch IPAdapterFaceID IPAdapterFaceIDKolors
IPAAdapterFaceIDBatch IPAdapterTiled IPAdapterTiledBatch IPAdapterEmbeds IPAdapterEmbedsBatch IPAdapterStyleComposition
IPAdapterStyleCompositionBatch IPAdapterMS IPAdapterClipVisionEnhancer IPAdapterClipVisionEnhancerBatch
IPAdapterFromParams IPAdapterPreciseStyleTransfer IPAdapterPreciseStyleTransferBatch IPAdapterPreciseComposition
IPAdapterPreciseCompositionBatch IPAdapterUnifiedLoader IPAdapterUnifiedLoaderFaceID IPAdapterModelLoader
IPAdapterInsightFaceLoader IPAdapterUnifiedLoaderCommunity IPAdapterEncoder IPAdapterCombineEmbeds IPAdapterNoise
PrepImageForClipVision IPAdapterSaveEmbeds IPAdapterLoadEmbeds IPAdapterWeights IPAdapterCombineWeights
IPAdapterWeightsFromStrategy IPAdapterPromptScheduleFromWeightsStrategy IPAdapterRegionalConditioning
IPAdapterCombineParams""".split()
OURS = set(data.TARGETS)


def load(name):
    if EXAMPLES is None:
        pytest.skip(NO_EXAMPLES)
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def converted(name):
    return convert(load(name))


def by_id(workflow):
    return {node["id"]: node for node in workflow["nodes"]}


def check_links(workflow):
    """Every link is listed at both of its ends and every listed link exists; ids stay under the counters."""
    nodes, links = by_id(workflow), {link[0]: link for link in workflow["links"]}
    for link_id, origin, slot, target, target_slot, _ in workflow["links"]:
        assert link_id in (nodes[origin]["outputs"][slot].get("links") or []), f"link {link_id} not at its origin"
        assert nodes[target]["inputs"][target_slot]["link"] == link_id, f"link {link_id} not at its target"
    for node in workflow["nodes"]:
        for slot in node.get("inputs") or []:
            assert slot.get("link") is None or slot["link"] in links, f"node {node['id']}: dangling {slot}"
        for out in node.get("outputs") or []:
            assert all(l in links for l in out.get("links") or []), f"node {node['id']}: dangling {out}"
    assert workflow["last_node_id"] >= max(nodes) and workflow["last_link_id"] >= max(links, default=0)


def _without_links(node):
    node = copy.deepcopy(node)
    for slot in node.get("inputs") or []:
        slot.pop("link", None)
    for slot in node.get("outputs") or []:
        slot.pop("links", None)
        slot.pop("slot_index", None)
    return node


# ------------------------------------------------------------------------------------------------ the data

def test_the_37_node_ids_of_the_incumbent_each_have_a_rule():
    assert len(INCUMBENT_IDS) == 37 and set(data.RULES) == set(INCUMBENT_IDS)
    if PACK is not None:  # the incumbent's own file, when a copy of it is at hand
        text = (PACK / "IPAdapterPlus.py").read_text(encoding="utf-8")
        block = text[text.index("NODE_CLASS_MAPPINGS = {"):]
        block = block[:block.index("}")]
        assert set(re.findall(r'"(\w+)":', block)) == set(INCUMBENT_IDS)


def test_weight_types_agree_with_the_presets_module_when_it_has_them(ext):
    """The preset names are agreed data; once the presets module maps the incumbent's weight types itself, both
    must say the same."""
    presets = ext.ipadapter_core.presets
    assert set(data.WEIGHT_TYPES) == {"linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input",
                                      "weak output", "weak middle", "strong middle", "style transfer", "composition",
                                      "strong style transfer", "style and composition", "style transfer precise",
                                      "composition precise"}
    assert presets.INCUMBENT_WEIGHT_TYPES == data.WEIGHT_TYPES
    here = set(presets.LAYER_PRESETS)
    assert set(data.WEIGHT_TYPES.values()) <= here


def test_incumbent_block_numbers_cover_every_block_of_our_layer_table(ext):
    layouts = ext.ipadapter_core.LAYOUTS
    for family, blocks in data.INCUMBENT_BLOCKS.items():
        ours = {f"{n} {i}" if n != "middle" else "middle" for n, i, _ in (s.key for s in layouts[family])}
        assert set(blocks) == ours and len(blocks) == len(ours), family
        order = {"input": 0, "middle": 1, "output": 2}
        assert blocks == sorted(blocks, key=lambda b: (order[b.split()[0]], int(b.split()[-1]) if " " in b else 0))
    # the incumbent's own tables: SDXL style 6, composition 3; SD1.5 composition 4 (x0.25) and 5
    sdxl, sd15 = data.INCUMBENT_BLOCKS["sdxl"], data.INCUMBENT_BLOCKS["sd15"]
    assert (sdxl[6], sdxl[3], sd15[4], sd15[5]) == ("output 1", "input 8", "input 7", "input 8")


# ------------------------------------------------------------------------------------------------ the examples

@pytest.mark.parametrize("name", NAMES)
def test_every_example_converts_keeping_the_rest_of_the_graph(name):
    source = load(name)
    out, report = convert(source)
    check_links(out)
    before, after = by_id(source), by_id(out)
    kept = {e["node"] for e in report.kept}
    for nid, node in before.items():
        if node["type"] not in data.RULES:
            assert _without_links(after[nid]) == _without_links(node), f"node {nid} ({node['type']}) changed"
        elif nid in after:
            assert after[nid]["pos"] == node["pos"], f"node {nid} moved"
            assert (after[nid]["type"] in OURS) != (nid in kept), f"node {nid}: neither converted nor reported"
        else:
            assert node["type"] == "PrepImageForClipVision", f"node {nid} ({node['type']}) vanished"
    assert all(after[n]["type"] in data.RULES for n in kept)
    new = set(after) - set(before)
    assert all(n > source["last_node_id"] for n in new) and all(after[n]["type"] in OURS for n in new)
    assert out["groups"] == source.get("groups", []) and out.get("extra") == source.get("extra")
    assert not {n["type"] for n in out["nodes"]} & (set(data.RULES) - {e["type"] for e in report.kept})


def _node(workflow, type_, **where):
    found = [n for n in workflow["nodes"] if n["type"] == type_
             and all(n.get(k) == v for k, v in where.items())]
    assert len(found) == 1, f"{len(found)} {type_} nodes"
    return found[0]


def _feeds(workflow, node, name):
    """(origin node, origin slot) of a node's input."""
    link = next(s["link"] for s in node["inputs"] if s["name"] == name)
    origin, slot = next(l[1:3] for l in workflow["links"] if l[0] == link)
    return by_id(workflow)[origin], slot


def test_an_apply_node_becomes_encode_then_apply_with_its_values():
    """ipadapter_advanced: IPAdapterAdvanced [0.8, linear, concat, 0, 1, V only] fed by PrepImageForClipVision
    [LANCZOS, top, 0.15] and a CLIP vision loader."""
    out, report = converted("ipadapter_advanced")
    apply = _node(out, "ApplyIPAdapterAdvanced", id=14)
    assert apply["widgets_values"] == [0.8, 0, 1, "linear", 1.0, "", "constant", False, "V only", 1.0, 1.0]
    encode, slot = _feeds(out, apply, "image_prompt")
    assert encode["type"] == "EncodeImagePrompt" and slot == 0
    assert encode["widgets_values"] == ["top/left crop", 8, "lanczos", 0.15]
    assert _feeds(out, encode, "image")[0]["type"] == "LoadImage"  # the Prep node folded away
    assert _feeds(out, encode, "clip_vision")[0]["type"] == "CLIPVisionLoader"
    assert _feeds(out, apply, "ipadapter")[0]["type"] == "LoadIPAdapter"


def test_unified_loader_gives_model_adapter_and_encoder():
    out, report = converted("ipadapter_simple")
    loader = _node(out, "LoadIPAdapterByPreset")
    assert loader["widgets_values"] == ["plus", "auto"] and [o["type"] for o in loader["outputs"]] == [
        "MODEL", "IPADAPTER", "CLIP_VISION"]
    apply = _node(out, "ApplyIPAdapterAdvanced")
    assert apply["widgets_values"][:4] == [0.8, 0, 1, "linear"]  # no weight_type saved: 'standard'
    encode = _feeds(out, apply, "image_prompt")[0]
    assert _feeds(out, encode, "clip_vision") == (loader, 2)
    assert _feeds(out, apply, "model") == (loader, 0) and _feeds(out, apply, "ipadapter") == (loader, 1)
    assert _node(out, "KSampler")["inputs"][0]["link"] == apply["outputs"][0]["links"][0]
    assert not report.kept


def test_combine_embeds_becomes_combine_image_prompts():
    out, _ = converted("ipadapter_combine_embeds")
    methods = {}
    for apply in [n for n in out["nodes"] if n["type"] == "ApplyIPAdapterAdvanced"]:
        feed = _feeds(out, apply, "image_prompt")[0]
        methods[apply["id"]] = feed["widgets_values"][0] if feed["type"] == "CombineImagePrompts" else "concat"
    assert methods == {14: "concat", 43: "add", 51: "norm average", 47: "average"}


def test_mad_scientist_layer_weights_by_block():
    out, report = converted("ipadapter_precise_composition")
    ms = _node(out, "ApplyIPAdapterAdvanced", id=15)
    values = dict(zip(["weight", "start_at", "end_at", "layer_weights", "composition_weight",
                       "custom_layer_weights"], ms["widgets_values"]))
    assert values["layer_weights"] == "custom"
    assert values["custom_layer_weights"] == ("input 4=0, input 5=0, input 7=0, input 8=0.8, middle=0, output 0=0, "
                                              "output 1=0.35, output 2=0, output 3=0, output 4=0, output 5=0")
    precise = _node(out, "ApplyIPAdapterAdvanced", id=12)
    assert precise["widgets_values"][:5] == [0.8, 0, 1, "composition precise", 0.35000000000000003]
    assert precise["widgets_values"][8] == "K+mean(V) w/ C penalty"  # embeds_scaling, after unfold_batch


def test_weights_from_ipadapter_weights_become_frame_weights():
    out, _ = converted("ipadapter_weights")
    apply = _node(out, "ApplyIPAdapterAdvanced")
    weights, slot = _feeds(out, apply, "frame_weights")
    assert weights["type"] == "IPAdapterFrameWeights" and slot == 0
    assert weights["widgets_values"] == ["1.0, 0.0", "linear", 6, 0, 9999]
    assert apply["widgets_values"][0] == 1.0 and apply["widgets_values"][7] is True  # weight, unfold_batch
    assert _feeds(out, weights, "frames")[0]["type"] == "PrimitiveNode"


def test_faceid_nodes_become_face_analysis_face_prompt_and_apply():
    out, report = converted("ipadapter_faceid")
    loader, apply = _node(out, "LoadIPAdapterByPreset"), _node(out, "ApplyIPAdapterAdvanced")
    assert loader["widgets_values"][0] == "faceid plus v2"
    face = _feeds(out, apply, "image_prompt")[0]
    assert face["type"] == "EncodeFacePrompt"
    assert _feeds(out, face, "face_analysis")[0]["type"] == "LoadFaceAnalysis"
    assert _feeds(out, face, "clip_vision") == (loader, 2)
    values = apply["widgets_values"]
    assert values[:4] == [1, 0, 1, "linear"] and values[-2:] == [0.6, 2]  # lora_strength, shortcut_weight


def test_style_and_composition_get_one_encoder_each():
    out, _ = converted("ipadapter_style_composition")
    apply = _node(out, "ApplyIPAdapterStyleComposition")
    assert apply["widgets_values"] == [1.2, 1, False, 0, 1, "V only"]
    style, composition = (_feeds(out, apply, n)[0] for n in ("image_prompt_style", "image_prompt_composition"))
    assert style["type"] == composition["type"] == "EncodeImagePrompt" and style["id"] != composition["id"]
    assert _feeds(out, style, "image")[0]["id"] != _feeds(out, composition, "image")[0]["id"]


def test_encoder_and_embeds_nodes_keep_their_chain():
    out, report = converted("ipadapter_weighted_embeds")
    apply = _node(out, "ApplyIPAdapterAdvanced")
    combine = _feeds(out, apply, "image_prompt")[0]
    assert combine["type"] == "CombineImagePrompts" and combine["widgets_values"][0] == "average"
    loader = _node(out, "LoadIPAdapterByPreset")
    for name in ("image_prompt", "image_prompt_2"):
        encode = _feeds(out, combine, name)[0]
        assert encode["type"] == "EncodeImagePrompt" and _feeds(out, encode, "clip_vision") == (loader, 2)
    notes = " ".join(n for e in report.converted for n in e["notes"])
    assert "weight = 1.5 not converted" in notes and "neg_embed" in notes


def test_what_has_no_equivalent_is_kept_and_reported():
    out, report = converted("ipadapter_regional_conditioning")
    assert sorted(e["type"] for e in report.kept) == ["IPAdapterCombineParams", "IPAdapterFromParams"] + [
        "IPAdapterRegionalConditioning"] * 3
    assert all("IPADAPTER_PARAMS" in e["why"] for e in report.kept)
    assert _node(out, "IPAdapterFromParams")["widgets_values"] == _node(load("ipadapter_regional_conditioning"),
                                                                        "IPAdapterFromParams")["widgets_values"]


@pytest.mark.parametrize("name", ["image_variation", "style_transfer", "by_contents"])
def test_a_graph_without_incumbent_nodes_is_left_as_it_is(name):
    ours = json.loads((REPO / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    out, report = convert(ours)
    assert out == ours and not report.converted and not report.kept


def test_converting_twice_changes_nothing_more():
    once, _ = converted("ipadapter_weights")
    twice, report = convert(once)
    assert twice == once and not report.converted


def test_links_written_as_objects_stay_objects():
    source = load("ipadapter_simple")
    fields = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    source["links"] = [dict(zip(fields, link)) for link in source["links"]]
    out, _ = convert(source)
    assert all(isinstance(link, dict) and set(link) == set(fields) for link in out["links"])
    as_arrays = dict(out, links=[[link[f] for f in fields] for link in out["links"]])
    assert as_arrays == converted("ipadapter_simple")[0]


def test_a_loader_preset_without_equivalent_keeps_the_loader():
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
             "2": {"class_type": "IPAdapterUnifiedLoaderCommunity", "inputs": {"model": ["1", 0], "preset": "Kolors"}},
             "3": {"class_type": "IPAdapterUnifiedLoaderCommunity", "inputs": {"model": ["1", 0],
                                                                              "preset": "Composition"}}}
    out, report = convert(graph)
    assert out["2"] == graph["2"] and report.kept[0]["why"].startswith("preset 'Kolors': Kolors")
    assert out["3"]["class_type"] == "LoadIPAdapterByPreset" and out["3"]["inputs"]["preset"] == "plus"


# ------------------------------------------------------------------------------------------------ API format

def _api_graph():
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "2": {"class_type": "IPAdapterUnifiedLoader",
              "inputs": {"model": ["1", 0], "preset": "VIT-G (medium strength)"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "4": {"class_type": "PrepImageForClipVision", "inputs": {"image": ["3", 0], "interpolation": "BICUBIC",
                                                                 "crop_position": "pad", "sharpening": 0.0}},
        "5": {"class_type": "IPAdapterAdvanced", "inputs": {
            "model": ["2", 0], "ipadapter": ["2", 1], "image": ["4", 0], "weight": 0.7, "weight_type": "style transfer",
            "combine_embeds": "average", "start_at": 0.1, "end_at": 0.9, "embeds_scaling": "V only"}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "seed": 3, "steps": 2}},
    }


def test_api_format_converts_by_input_name():
    out, report = convert(_api_graph())
    assert set(out) >= {"1", "2", "3", "5", "6"} and "4" not in out  # the Prep node folded into the encoder
    assert out["2"] == {"class_type": "LoadIPAdapterByPreset", "inputs": {
        "model": ["1", 0], "preset": "vit-G", "ipadapter_name": "auto"}}
    apply = out["5"]
    assert apply["class_type"] == "ApplyIPAdapterAdvanced" and apply["inputs"]["model"] == ["2", 0]
    assert {k: apply["inputs"][k] for k in ("weight", "start_at", "end_at", "layer_weights")} == {
        "weight": 0.7, "start_at": 0.1, "end_at": 0.9, "layer_weights": "style transfer"}
    combine = out[apply["inputs"]["image_prompt"][0]]
    assert combine["class_type"] == "CombineImagePrompts" and combine["inputs"]["method"] == "average"
    encode = out[combine["inputs"]["image_prompt"][0]]
    assert encode["class_type"] == "EncodeImagePrompt"
    assert encode["inputs"] == {"clip_vision": ["2", 2], "image": ["3", 0], "fit": "pad", "batch_size": 8,
                                "interpolation": "bicubic", "sharpening": 0.0}
    assert out["6"] == _api_graph()["6"]  # bicubic is this version's interpolation


def test_api_and_ui_formats_give_the_same_graph():
    """The converted API prompt of a small UI graph equals the conversion of its API prompt."""
    ui = load("ipadapter_simple")
    out_ui, _ = convert(ui)
    prompt = {str(n["id"]): {"class_type": n["type"], "inputs": {}} for n in ui["nodes"]}
    links = {l[0]: l for l in ui["links"]}
    for node in ui["nodes"]:
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None:
                link = links[slot["link"]]
                prompt[str(node["id"])]["inputs"][slot["name"]] = [str(link[1]), link[2]]
    prompt["11"]["inputs"]["preset"] = "PLUS (high strength)"
    prompt["10"]["inputs"].update(weight=0.8, start_at=0, end_at=1)
    out_api, _ = convert(prompt)
    ui_links, ui_nodes = {l[0]: l for l in out_ui["links"]}, by_id(out_ui)
    as_types = lambda inputs: {k: (out_api[v[0]]["class_type"], v[1]) for k, v in inputs.items()  # noqa: E731
                               if isinstance(v, list)}
    ui_graph = sorted((n["type"], sorted({s["name"]: (ui_nodes[ui_links[s["link"]][1]]["type"], ui_links[s["link"]][2])
                                          for s in n.get("inputs") or [] if s.get("link") is not None}.items()))
                      for n in out_ui["nodes"])
    api_graph = sorted((n["class_type"], sorted(as_types(n["inputs"]).items())) for n in out_api.values())
    assert ui_graph == api_graph
    assert len(out_api) == len(out_ui["nodes"])


@pytest.mark.skipif(EXAMPLES is None, reason=NO_EXAMPLES)
def test_command_line_converts_a_folder_and_reports(tmp_path):
    run = subprocess.run([sys.executable, "-m", "tools.convert_workflow", "--folder", str(EXAMPLES),
                          str(tmp_path / "out"), "--report", str(tmp_path / "report.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.json")) == NAMES
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report) == len(NAMES)
    assert "IPAdapterFaceIDKolors: kept as it is (Kolors" in run.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    run = subprocess.run([sys.executable, "-m", "tools.convert_workflow", str(bad), str(tmp_path / "x.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "not a ComfyUI workflow" in run.stderr


# ------------------------------------------------------------------------------------------------ in the host

needs_host = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
# Examples that use only core nodes and ours once converted, run here on stand-in files (ipadapter_cosxl_edit
# also does, but needs an InstructPix2Pix-style SDXL edit checkpoint, which has no stand-in here).
RUN = ["ipadapter_simple", "ipadapter_weighted_embeds"]
RUN_BY_DEFAULT = ["ipadapter_simple"]  # the other with IPADAPTER_SLOW_TESTS=1 (two encodes: ~25 s more)
RUN_CHECKPOINT = "sd15/realisticVisionV51_v51VAE.safetensors"


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    """The host with this extension, and stand-ins under the names the runnable examples use; the adapter and the
    encoder under names that say nothing (the converted loader finds them by their contents)."""
    import workflow_files
    from host_server import comfy_server
    from official_formats import write_random_adapter
    base = tmp_path_factory.mktemp("converted_host")
    for folder in ("models/checkpoints/sd15", "models/ipadapter", "models/clip_vision", "input"):
        (base / folder).mkdir(parents=True)
    (base / "models/checkpoints" / RUN_CHECKPOINT).symlink_to(model_files["sd15"])
    (base / "models/clip_vision/encoder.safetensors").symlink_to(model_files["vit_h"])
    write_random_adapter(base / "models/ipadapter/adapter.safetensors", "ip-adapter-plus_sd15")
    images = {v for name in (NAMES if EXAMPLES else []) for n in load(name)["nodes"] if n["type"] == "LoadImage"
              for v in n["widgets_values"][:1]}  # every example's reference images: the front-end shows them
    for seed, name in enumerate(sorted(images)):
        workflow_files._image(seed)(base / "input" / name, model_files)
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(
        {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
    with comfy_server(base, extra_args=("--bf16-text-enc",)) as running:
        yield running


@pytest.fixture(scope="module")
def object_info(server):
    from host_server import request
    return request(server["port"], "/object_info")


def _allowed_missing(name, report, object_info):
    """Node types a converted graph may use that the host does not register: other packs the example uses, the
    incumbent's nodes reported as kept."""
    source = {n["type"] for n in load(name)["nodes"]}
    other_packs = source - set(object_info) - set(data.RULES) - FRONTEND_ONLY
    return other_packs | {e["type"] for e in report.kept}


@needs_host
@pytest.mark.parametrize("name", NAMES)
def test_converted_example_fits_the_host(name, object_info):
    out, report = converted(name)
    missing = {n["type"] for n in out["nodes"]} - set(object_info) - FRONTEND_ONLY
    assert missing <= _allowed_missing(name, report, object_info), sorted(missing)
    nodes = by_id(out)
    for node in out["nodes"]:
        if node["type"] in OURS and node["type"] in object_info:
            names = {n for n, *_ in ordered_inputs(object_info[node["type"]])}
            extra = {s["name"] for s in node["inputs"]} - names
            assert not extra, f"node {node['id']} ({node['type']}): unknown inputs {extra}"
    for link_id, origin, slot, target, target_slot, type_ in out["links"]:
        a, b = nodes[origin], nodes[target]
        if a["type"] in OURS and a["type"] in object_info:
            assert object_info[a["type"]]["output"][slot] == type_, f"link {link_id} leaves as {type_}"
        if b["type"] in OURS and b["type"] in object_info:
            input_name = b["inputs"][target_slot]["name"]
            types = {n: t for n, t, *_ in ordered_inputs(object_info[b["type"]])}
            assert types.get(input_name, type_) == type_, f"link {link_id} ({type_}) into {input_name}"
    # Links the report says were removed (an output with no equivalent) leave their inputs open, as reported.
    lost = any("links removed" in note for entry in report.converted for note in entry["notes"])
    if not lost:  # every value of our nodes is one this version takes (the examples' own
        from test_workflows import _check_node  # core nodes may be from older host versions: not ours to check)
        for node in out["nodes"]:
            if node["type"] in OURS:
                _check_node(name, node, _their_files_listed(node, object_info[node["type"]]))


# Inputs that list a user's files: the examples name files this host does not have; any name is fine here.
FILE_INPUTS = {("LoadIPAdapter", "ipadapter_name"), ("LoadIPAdapterByPreset", "ipadapter_name"),
               ("LoadImagePrompt", "prompt_file"), ("LoadFaceAnalysis", "model_pack")}


def _their_files_listed(node, info):
    """``info`` with the node's own file names added to its file inputs' options."""
    from workflow_format import widget_values_by_name
    info = copy.deepcopy(info)
    values = widget_values_by_name(node, info)
    for section in ("required", "optional"):
        for input_name, spec in info["input"].get(section, {}).items():
            if (node["type"], input_name) in FILE_INPUTS and input_name in values:
                options = spec[0] if isinstance(spec[0], list) else spec[1].setdefault("options", [])
                options.append(values[input_name])
    return info


@needs_host
@pytest.mark.parametrize("name", [n if n in RUN_BY_DEFAULT else pytest.param(n, marks=pytest.mark.skipif(
    not os.environ.get("IPADAPTER_SLOW_TESTS"), reason="a second run: set IPADAPTER_SLOW_TESTS=1")) for n in RUN])
def test_converted_example_runs_to_an_image(name, server, object_info):
    from host_server import run_prompt
    from test_workflows import TEST_SIZE, shrink
    from PIL import Image
    out, report = converted(name)
    assert not report.kept
    prompt = shrink(to_api(out, object_info))
    for node in prompt.values():  # the examples' own file names, as the stand-ins are named
        if node["class_type"] == "CheckpointLoaderSimple":
            assert node["inputs"]["ckpt_name"] == RUN_CHECKPOINT
    result = run_prompt(server["port"], prompt)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000]
    saves = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    assert saves
    for key in saves:
        image = result["outputs"][key]["images"][0]
        with Image.open(server["base"] / "output" / image.get("subfolder", "") / image["filename"]) as img:
            assert img.size == (TEST_SIZE, TEST_SIZE)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    import playwright.sync_api as playwright
    from test_workflows import CHROMIUM, CHROMIUM_FLAGS
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium")), executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
            headless=True, viewport={"width": 2200, "height": 1200})
        try:
            page = context.new_page()
            errors = []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.goto(server["url"])
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph && Object.keys("
                                   "LiteGraph.registered_node_types).includes('LoadIPAdapterByPreset')",
                                   timeout=120_000)
            page.wait_for_timeout(2000)
            page.errors = errors
            yield page
        finally:
            context.close()


def _browser_skip():
    from test_workflows import NO_BROWSER_REASON
    return NO_BROWSER_REASON


@needs_host
@pytest.mark.parametrize("name", NAMES)
def test_converted_example_loads_in_the_front_end(name, page, object_info):
    reason = _browser_skip()
    if reason:
        pytest.skip(reason)
    from test_workflows import LOAD_JS, MISSING_DIALOG, PROMPT_JS
    out, report = converted(name)
    page.errors.clear()
    loaded = page.evaluate(LOAD_JS, [out, f"{name}.json"])
    page.wait_for_timeout(300)
    dialog = page.get_by_text(MISSING_DIALOG).count() > 0
    if dialog:
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)
    allowed = _allowed_missing(name, report, object_info)
    assert set(loaded["missing"]) <= allowed, f"missing node types: {sorted(set(loaded['missing']) - allowed)}"
    assert loaded["inGraph"] == len(out["nodes"])
    if not loaded["missing"]:
        assert not dialog and page.errors == [], page.errors
        if name in RUN:  # the front-end's API graph is the one the run test queues
            frontend = json.loads(page.evaluate(PROMPT_JS))
            ours = {k: v for k, v in to_api(out, object_info).items()}
            strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa
            assert strip(frontend) == ours


def test_readme_table_gives_each_incumbent_node_its_fate():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Moving from IPAdapter_plus"):]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, re.MULTILINE)
    assert sorted(name for name, _ in rows) == sorted(INCUMBENT_IDS)
    for name, fate in rows:
        assert ("not converted" in fate) == (data.RULES[name].target is None), name
        target = data.RULES[name].target
        assert target is None or name == "PrepImageForClipVision" or f"`{target}`" in fate or "the same" in fate \
            or fate.startswith("as `"), name


def test_the_targets_are_the_registered_nodes(ext):
    """The converter's copy of our node surfaces (it runs without torch) equals the nodes as registered: input
    names in order, which are widgets, their defaults, and the output types."""
    for name, target in data.TARGETS.items():
        schema = ext.nodes.NODE_CLASS_MAPPINGS[name].GET_SCHEMA()
        assert [i.name for i in target.inputs] == [i.id for i in schema.inputs], name
        for mine, real in zip(target.inputs, schema.inputs):
            assert mine.optional == bool(real.optional), (name, mine.name)
            if mine.widget and real.default is not None:  # (a file list has none)
                assert mine.default == real.default, (name, mine.name)
        assert [t for _, t in target.outputs] == [o.get_io_type() for o in schema.outputs], name


def _ui_node(id_, type_, pos, inputs=(), outputs=(), widgets=()):
    """A node as the front-end saves it: inputs [(name, type, link)], outputs [(name, type, links)]."""
    return {"id": id_, "type": type_, "pos": list(pos), "size": [300, 100], "flags": {}, "order": id_ - 1, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
            "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs],
            "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}


def _ui_graph():
    """A small UI-format graph written here with the incumbent's node types and widget order (the twin of the
    example-based tests: it needs no copy of the incumbent)."""
    nodes = [
        _ui_node(1, "CheckpointLoaderSimple", (0, 0), outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", None),
                                                               ("VAE", "VAE", None)], widgets=["sd15.safetensors"]),
        _ui_node(2, "IPAdapterUnifiedLoader", (400, 0),
                 inputs=[("model", "MODEL", 1), ("ipadapter", "IPADAPTER", None)],
                 outputs=[("model", "MODEL", [2]), ("ipadapter", "IPADAPTER", [3])], widgets=["PLUS (high strength)"]),
        _ui_node(3, "LoadImage", (0, 300), outputs=[("IMAGE", "IMAGE", [4]), ("MASK", "MASK", None)],
                 widgets=["reference.png", "image"]),
        _ui_node(4, "IPAdapterAdvanced", (800, 0), inputs=[
            ("model", "MODEL", 2), ("ipadapter", "IPADAPTER", 3), ("image", "IMAGE", 4),
            ("image_negative", "IMAGE", None), ("attn_mask", "MASK", None), ("clip_vision", "CLIP_VISION", None)],
            outputs=[("MODEL", "MODEL", [5])], widgets=[0.7, "style transfer", "concat", 0.1, 0.9, "K+V"]),
        _ui_node(5, "KSampler", (1200, 0), inputs=[("model", "MODEL", 5)], outputs=[("LATENT", "LATENT", None)],
                 widgets=[3, "fixed", 20, 7.0, "euler", "normal", 1.0]),
    ]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 4, 0, "MODEL"], [3, 2, 1, 4, 1, "IPADAPTER"],
             [4, 3, 0, 4, 2, "IMAGE"], [5, 4, 0, 5, 0, "MODEL"]]
    return {"last_node_id": 5, "last_link_id": 5, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {}, "version": 0.4}


def test_a_ui_graph_written_here_converts():
    graph = _ui_graph()
    out, report = convert(copy.deepcopy(graph))
    check_links(out)
    types = {n["type"] for n in out["nodes"]}
    assert types == {"CheckpointLoaderSimple", "LoadIPAdapterByPreset", "LoadImage", "EncodeImagePrompt",
                     "ApplyIPAdapterAdvanced", "KSampler"}
    assert out["last_node_id"] > 5 and not report.kept
    loader, apply = _node(out, "LoadIPAdapterByPreset", id=2), _node(out, "ApplyIPAdapterAdvanced", id=4)
    assert loader["widgets_values"][0] == "plus"
    assert apply["widgets_values"][:4] == [0.7, 0.1, 0.9, "style transfer"] and apply["widgets_values"][8] == "K+V"
    encode = _feeds(out, apply, "image_prompt")[0]
    assert _feeds(out, encode, "image")[0]["id"] == 3 and _feeds(out, encode, "clip_vision") == (loader, 2)
    assert _feeds(out, apply, "model") == (loader, 0) and _feeds(out, apply, "ipadapter") == (loader, 1)
    kept = {n["id"]: n for n in graph["nodes"] if n["type"] in ("CheckpointLoaderSimple", "LoadImage", "KSampler")}
    for node in out["nodes"]:
        if node["id"] in kept:
            assert _without_links(node) == _without_links(kept[node["id"]])
