"""Load IP-Adapter (by contents): files are told apart by their keys and shapes, never their names.

Files here are written header-first at the official key sets and real shapes (tests/official_formats.py, written
from the published format), their data left as a sparse hole of zeros: the scan reads only the header, and the host
can still load them. Names are deliberately meaningless (``a1.safetensors`` ...) or misleading."""
import json
import math
import os
import struct
import time

import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from faceid_formats import faceid_state_dict
from official_formats import OFFICIAL, official_state_dict

import ipadapter_suite.ipadapter_core.scan as scan
from ipadapter_suite.ipadapter_core import InputError
needs_host = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
ITEMSIZE = {"F16": 2, "F32": 4}


def write_header_only(path, shapes, dtype="F16"):
    """A valid .safetensors file for ``{key: shape}``: the header, then zeros as a sparse hole (no disk used)."""
    header, offset = {}, 0
    for key in sorted(shapes):
        size = ITEMSIZE[dtype] * math.prod(shapes[key])
        header[key] = {"dtype": dtype, "shape": list(shapes[key]), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)


def adapter_shapes(state_dict):
    return {f"{part}.{key}": tuple(t.shape) for part in state_dict for key, t in state_dict[part].items()}


def clip_shapes(hidden, layers, projection, layout="transformers"):
    """The keys the scan reads of a CLIP vision file (a subset of the real file; the host-level test uses all)."""
    if layout == "transformers":
        shapes = {"vision_model.embeddings.patch_embedding.weight": (hidden, 3, 14, 14),
                  "visual_projection.weight": (projection, hidden)}
        shapes.update({f"vision_model.encoder.layers.{i}.layer_norm1.weight": (hidden,) for i in range(layers)})
    else:  # OpenCLIP's own names
        shapes = {"visual.conv1.weight": (hidden, 3, 14, 14), "visual.proj": (hidden, projection)}
        shapes.update({f"visual.transformer.resblocks.{i}.ln_1.weight": (hidden,) for i in range(layers)})
    return shapes


VIT_H, VIT_G = clip_shapes(1280, 32, 1024), clip_shapes(1664, 48, 1280)


def found(tmp_path, files, classify):
    """Write ``{name: shapes}`` and classify each as the host would list it."""
    for name, shapes in files.items():
        write_header_only(tmp_path / name, shapes)
    return [classify(str(tmp_path / name), name) for name in sorted(files)]


# ------------------------------------------------------------------------------------------------ classification

@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_every_official_layout_is_recognised_from_its_header(stem, tmp_path):
    _, _, _, kind, tokens, family, encoder = OFFICIAL[stem]
    write_header_only(tmp_path / "renamed.safetensors", adapter_shapes(official_state_dict(stem)))
    result = scan.classify_adapter(str(tmp_path / "renamed.safetensors"), "renamed.safetensors")
    assert result.spec is not None, result.kind
    assert (result.spec.kind, result.spec.tokens, result.spec.family) == (kind, tokens, family)
    assert result.spec.encoder.endswith(encoder) and encoder in result.kind


def test_a_bin_file_is_read_with_weights_only_onto_meta(tmp_path):
    """A .bin file in the reference's torch.save layout: classified without reading its values."""
    nested = {part: {k: torch.zeros(t.shape, dtype=torch.float16) for k, t in tensors.items()}
              for part, tensors in official_state_dict("ip-adapter-full-face_sd15").items()}
    torch.save(nested, tmp_path / "x.bin")
    result = scan.classify_adapter(str(tmp_path / "x.bin"), "x.bin")
    assert result.spec.kind == "full_face" and result.spec.family == "sd15"


@pytest.mark.parametrize("shapes, expected", [
    (VIT_H, scan.VIT_H), (VIT_G, scan.VIT_BIGG), (clip_shapes(1280, 32, 1024, "open_clip"), scan.VIT_H),
    (clip_shapes(1664, 48, 1280, "open_clip"), scan.VIT_BIGG), (clip_shapes(1024, 24, 768), "CLIP ViT-L/14"),
    (clip_shapes(1280, 24, 1024), None),  # ViT-H widths, wrong depth
    (clip_shapes(1152, 27, 1152), None),  # SigLIP-like
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, None),
])
def test_clip_vision_encoders_are_told_apart_by_widths_and_depth(shapes, expected, tmp_path):
    write_header_only(tmp_path / "f.safetensors", shapes)
    assert scan.classify_clip_vision(str(tmp_path / "f.safetensors"), "f.safetensors").encoder == expected


def test_unusable_files_say_what_they_are(tmp_path):
    write_header_only(tmp_path / "checkpoint.safetensors", {"model.diffusion_model.out.2.weight": (4, 320, 3, 3)})
    write_header_only(tmp_path / "cut.safetensors", adapter_shapes(official_state_dict("ip-adapter_sd15")))
    os.truncate(tmp_path / "cut.safetensors", os.path.getsize(tmp_path / "cut.safetensors") // 2)
    (tmp_path / "text.safetensors").write_bytes(b"hello, not a weight file at all")
    (tmp_path / "code.bin").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would call os.system
    kinds = {name: scan.classify_adapter(str(tmp_path / name), name) for name in os.listdir(tmp_path)}
    assert all(f.spec is None for f in kinds.values())
    assert "not an IP-Adapter" in kinds["checkpoint.safetensors"].kind
    assert "truncated" in kinds["cut.safetensors"].kind
    assert "safetensors" in kinds["text.safetensors"].kind
    assert "weights-only" in kinds["code.bin"].kind


def test_the_scan_reads_a_file_again_only_when_it_changes(tmp_path):
    calls = []
    cached = scan.FileScan(lambda path, name: calls.append(name) or scan.classify_adapter(path, name))
    write_header_only(tmp_path / "a.safetensors", adapter_shapes(official_state_dict("ip-adapter_sd15")))
    write_header_only(tmp_path / "b.safetensors", adapter_shapes(official_state_dict("ip-adapter-plus_sd15")))
    listed = [(n, str(tmp_path / n)) for n in ("a.safetensors", "b.safetensors")]
    first = cached(listed)
    assert cached(listed) == first and calls == ["a.safetensors", "b.safetensors"]
    write_header_only(tmp_path / "a.safetensors", adapter_shapes(official_state_dict("ip-adapter_sdxl")))
    stat = os.stat(tmp_path / "a.safetensors")
    os.utime(tmp_path / "a.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even on coarse clocks
    again = cached(listed)
    assert calls == ["a.safetensors", "b.safetensors", "a.safetensors"]
    assert again[0].spec.family == "sdxl" and again[1] is first[1]
    assert cached(listed[1:]) == [first[1]] and len(calls) == 3  # a file gone from the listing is left out


def test_scanning_a_folder_of_real_size_headers_is_fast(tmp_path):
    """The scan reads headers only: 10 real-size adapter files (SDXL ones 700 MB each) in well under a second."""
    files = {f"{i}.safetensors": adapter_shapes(official_state_dict(stem)) for i, stem in enumerate(sorted(OFFICIAL))}
    for name, shapes in files.items():
        write_header_only(tmp_path / name, shapes)
    started = time.perf_counter()
    result = scan.FileScan(scan.classify_adapter)([(n, str(tmp_path / n)) for n in sorted(files)])
    assert all(f.spec is not None for f in result)
    print(f"scan of {len(files)} real-size headers: {time.perf_counter() - started:.3f} s")


# ------------------------------------------------------------------------------------------------ choosing

def _folders(tmp_path, adapters, encoders):
    (tmp_path / "ipadapter").mkdir()
    (tmp_path / "clip_vision").mkdir()
    return (found(tmp_path / "ipadapter", {n: adapter_shapes(official_state_dict(s)) for n, s in adapters.items()},
                  scan.classify_adapter),
            found(tmp_path / "clip_vision", encoders, scan.classify_clip_vision))


@pytest.mark.parametrize("preset, family, wanted", [
    ("standard", "sd15", "ip-adapter_sd15"), ("standard", "sdxl", "ip-adapter_sdxl_vit-h"),
    ("vit-G", "sd15", "ip-adapter_sd15_vit-G"), ("vit-G", "sdxl", "ip-adapter_sdxl"),
    ("plus", "sd15", "ip-adapter-plus_sd15"), ("plus face", "sdxl", "ip-adapter-plus_sdxl_vit-h"),
    ("full face", "sd15", "ip-adapter-full-face_sd15"), ("light", "sd15", "ip-adapter_sd15"),
])
def test_each_preset_finds_its_adapter_and_encoder_by_contents(preset, family, wanted, tmp_path):
    # one file of each layout (light and plus face share layouts with standard and plus: left out here),
    # names shuffled so that no name says what the file is
    stems = ["ip-adapter_sd15", "ip-adapter_sd15_vit-G", "ip-adapter-plus_sd15", "ip-adapter-full-face_sd15",
             "ip-adapter_sdxl", "ip-adapter_sdxl_vit-h", "ip-adapter-plus_sdxl_vit-h"]
    names = {stem: f"{i:02d}_{stems[-1 - i]}.safetensors" for i, stem in enumerate(stems)}
    adapters, encoders = _folders(tmp_path, {names[s]: s for s in stems},
                                  {"vit-g-looking-name.safetensors": VIT_H, "model.safetensors": VIT_G})
    adapter, encoder = scan.choose(preset, family, adapters, encoders)
    assert adapter.name == names[wanted]
    assert encoder.name == ("model.safetensors" if preset == "vit-G" else "vit-g-looking-name.safetensors")


def test_missing_files_are_listed_with_what_was_found(tmp_path):
    adapters, encoders = _folders(tmp_path, {"x.safetensors": "ip-adapter_sdxl"}, {"y.safetensors": VIT_H})
    with pytest.raises(InputError) as err:
        scan.choose("plus", "sd15", adapters, encoders)
    message = str(err.value)
    assert "\n" not in message
    assert "missing an SD1.5 plus adapter (OpenCLIP ViT-H/14) in models/ipadapter" in message
    assert "ip-adapter-plus_sd15.safetensors" in message  # what to download
    assert "x.safetensors → SDXL base adapter (OpenCLIP ViT-bigG/14)" in message
    assert "y.safetensors → OpenCLIP ViT-H/14" in message
    with pytest.raises(InputError, match="missing an OpenCLIP ViT-bigG/14 CLIP vision file"):
        scan.choose("vit-G", "sdxl", adapters, encoders)
    with pytest.raises(InputError, match="has no SDXL adapter .*SD1.5 only"):
        scan.choose("full face", "sdxl", adapters, encoders)


def test_look_alike_files_are_refused_until_one_is_picked(tmp_path):
    adapters, encoders = _folders(tmp_path, {"a.safetensors": "ip-adapter_sd15",
                                             "b.safetensors": "ip-adapter_sd15_light",
                                             "c.safetensors": "ip-adapter-plus_sd15"}, {"e.safetensors": VIT_H})
    with pytest.raises(InputError, match=r"2 files fit \(a.safetensors, b.safetensors\); the "
                       "contents of 'light' and 'standard'.*pick one in ipadapter_name"):
        scan.choose("light", "sd15", adapters, encoders)
    assert scan.choose("light", "sd15", adapters, encoders, "b.safetensors")[0].name == "b.safetensors"
    assert scan.choose("plus face", "sd15", adapters, encoders)[0].name == "c.safetensors"  # only one fits
    with pytest.raises(InputError, match="'c.safetensors' is SD1.5 plus adapter.*needs an SD1.5 "
                       "base adapter"):
        scan.choose("standard", "sd15", adapters, encoders, "c.safetensors")


@pytest.mark.parametrize("preset,family,picked,load_as", [
    ("faceid", "sd15", "a.safetensors", "auto"),
    ("faceid plus", "sd15", "b.safetensors", "plus"),
    ("faceid plus v2", "sd15", "b.safetensors", "plus v2"),  # a Plus file: only the preset says it is v2
    ("faceid portrait", "sd15", "c.safetensors", "auto"),
    ("faceid", "sdxl", "d.safetensors", "auto"),
])
def test_faceid_presets_pick_the_faceid_file_by_its_contents(tmp_path, preset, family, picked, load_as):
    stems = {"a": "ip-adapter-faceid_sd15", "b": "ip-adapter-faceid-plus_sd15",
             "c": "ip-adapter-faceid-portrait-v11_sd15", "d": "ip-adapter-faceid_sdxl",
             "e": "ip-adapter-plus-face_sd15"}
    listed = []
    for name, stem in stems.items():
        sd = faceid_state_dict(stem) if "faceid" in stem else official_state_dict(stem)
        write_header_only(tmp_path / f"{name}.safetensors", adapter_shapes(sd))
        listed.append((f"{name}.safetensors", str(tmp_path / f"{name}.safetensors")))
    adapters = scan.FileScan(scan.classify_adapter)(listed)
    assert "FaceID" in adapters[0].kind and adapters[0].spec is not None
    encoders = [scan.Found("vit-h", "vit-h.safetensors", "ViT-H", encoder=scan.VIT_H)]
    assert scan.choose(preset, family, adapters, encoders)[0].name == picked
    assert scan.preset_need(preset, family).load_as == load_as


def test_faceid_plus_needs_its_clip_vision_file(tmp_path):
    write_header_only(tmp_path / "b.safetensors", adapter_shapes(faceid_state_dict("ip-adapter-faceid-plus_sd15")))
    adapters = scan.FileScan(scan.classify_adapter)([("b.safetensors", str(tmp_path / "b.safetensors"))])
    with pytest.raises(InputError, match="missing an .*ViT-H.* CLIP vision file"):
        scan.choose("faceid plus v2", "sd15", adapters, [])


# ------------------------------------------------------------------------------------------------ the node

@pytest.fixture(scope="module")
def world(ext, tmp_path_factory):
    """A tiny SD1.5-layout model and SDXL-layout model; models/ipadapter and models/clip_vision pointed at
    temporary folders holding real-size, header-first files under meaningless names."""
    import folder_paths
    import graph_runner
    import host_models
    from parity_models import build_pair
    root = tmp_path_factory.mktemp("by_contents")
    for sub in ("ipadapter", "clip_vision"):
        (root / sub).mkdir()
    for i, stem in enumerate(["ip-adapter-plus_sd15", "ip-adapter_sdxl_vit-h", "ip-adapter_sd15_vit-G"]):
        write_header_only(root / "ipadapter" / f"file{i}.safetensors", adapter_shapes(official_state_dict(stem)))
    vit_h = host_models.shapes(host_models.clip_vision_specs("h"))  # every key the host's loader reads
    write_header_only(root / "clip_vision" / "encoder.safetensors", vit_h)
    saved = {k: folder_paths.folder_names_and_paths[k] for k in ("ipadapter", "clip_vision")}
    for key in saved:
        folder_paths.folder_names_and_paths[key] = ([str(root / key)], saved[key][1])
    graph_runner.register(ext.nodes.NODE_CLASS_MAPPINGS)
    sd15, _, _ = build_pair("sd15", seed=0, context_dim=32)
    sdxl, _, _ = build_pair("sdxl", seed=0, context_dim=32)
    yield dict(runner=graph_runner, sd15=sd15, sdxl=sdxl, root=root)
    folder_paths.folder_names_and_paths.update(saved)


def _run(w, model, preset, **more):
    runner = w["runner"]
    graph = {"0": runner.value("MODEL", model),
             "1": {"class_type": "LoadIPAdapterByPreset", "inputs": {"model": ["0", 0], "preset": preset, **more}}}
    graph.update({f"k{i}": {"class_type": "Keep", "inputs": {"value": ["1", i], "slot": str(i)}} for i in range(3)})
    return runner.run(graph)


@needs_host
def test_node_gives_the_model_adapter_and_encoder_the_preset_needs(world):
    result = _run(world, world["sd15"], "plus")
    assert result.error is None and result.valid, result.message
    out = result.outputs
    assert out["0"] is world["sd15"]
    assert out["1"].name == "file0.safetensors" and out["1"].spec.kind == "plus"
    assert type(out["2"]).__name__ == "ClipVisionModel" and out["2"].model.vision_model is not None
    sdxl = _run(world, world["sdxl"], "standard")
    assert sdxl.error is None, sdxl.message
    assert sdxl.outputs["1"].name == "file1.safetensors" and sdxl.outputs["1"].spec.family == "sdxl"


@needs_host
def test_node_says_what_it_found_when_a_preset_has_no_files(world):
    result = _run(world, world["sd15"], "vit-G")
    assert result.valid and "missing an OpenCLIP ViT-bigG/14 CLIP vision file" in result.error
    assert "file2.safetensors → SD1.5 base adapter (OpenCLIP ViT-bigG/14)" in result.error
    assert "encoder.safetensors → OpenCLIP ViT-H/14" in result.error
    refused = _run(world, world["sd15"], "medium")
    assert not refused.valid and "preset: 'medium' is not one of the options" in refused.message
    unknown = _run(world, world["sd15"], "plus", ipadapter_name="gone.safetensors")
    assert not unknown.valid and "'gone.safetensors' is not in models/ipadapter" in unknown.message
    wrong = _run(world, world["sd15"], "plus", ipadapter_name="file2.safetensors")
    assert "'file2.safetensors' is SD1.5 base adapter (OpenCLIP ViT-bigG/14)" in wrong.error
    picked = _run(world, world["sd15"], "plus", ipadapter_name="file0.safetensors")
    assert picked.error is None and picked.outputs["1"].name == "file0.safetensors"


@needs_host
def test_preset_options_are_the_agreed_names(ext):
    info = ext.nodes.NODE_CLASS_MAPPINGS["LoadIPAdapterByPreset"].GET_NODE_INFO_V1()
    options = info["input"]["required"]["preset"][1]["options"]
    assert options == ["light", "standard", "vit-G", "plus", "plus face", "full face", "faceid", "faceid plus",
                       "faceid plus v2", "faceid portrait"]


@needs_host
def test_a_file_added_or_written_again_changes_the_fingerprint(world, ext):
    node = ext.nodes.NODE_CLASS_MAPPINGS["LoadIPAdapterByPreset"]
    before = node.fingerprint_inputs(world["sd15"], "plus")
    assert node.fingerprint_inputs(world["sd15"], "plus") == before
    path = world["root"] / "ipadapter" / "new.safetensors"
    write_header_only(path, adapter_shapes(official_state_dict("ip-adapter-full-face_sd15")))
    added = node.fingerprint_inputs(world["sd15"], "plus")
    assert added != before
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert node.fingerprint_inputs(world["sd15"], "plus") != added
    path.unlink()
