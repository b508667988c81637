"""The shipped workflows (``workflows/*.json``, UI format) against the real host and its packaged front-end.

* every workflow references only node types the host registers, with widget values its ``/object_info`` allows,
  and links whose types fit both ends;
* every workflow runs to a saved image in the host, with random-weight model files made under the names it uses
  (``workflow_files.REGISTRY``), at 64 x 64 and 2 steps (the test shrinks sizes and steps, nothing else);
* in headless Chromium, each loads with no missing node types and no console errors, the front-end turns it into
  the same API graph the tests run, and the image-variation workflow queued from the page shows its image.

Every ``workflows/*.json`` is picked up; the browser tests skip with the reason when Chromium or Playwright is missing.
"""
import contextlib
import copy
import importlib.util
import json
import re
import shutil
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import HOST, NO_HOST_REASON, REPO
from host_server import EXTENSION_DIR_NAME, comfy_server, request, run_prompt
import workflow_files
from workflow_format import (FRONTEND_ONLY, CONTROL_AFTER_GENERATE, combo_options, extra_widget_values,
                             has_control_after_generate, is_widget, load, ordered_inputs, to_api,
                             widget_values_by_name)

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)

WORKFLOW_DIR = REPO / "workflows"
PATHS = sorted(WORKFLOW_DIR.glob("*.json"))
NAMES = [p.stem for p in PATHS]
WORKFLOWS = {p.stem: load(p) for p in PATHS}
# The use cases of the product's documentation; more workflows may be added beside them.
REQUIRED = {"image_variation", "image_and_text", "controlnet", "img2img", "inpainting", "two_adapters", "sdxl_vit_h"}
MAIN = "image_variation"
ARTIFACTS = REPO / "tests" / "artifacts"
TEST_SIZE, TEST_STEPS = 64, 2
NOTE_TYPES = {"Note", "MarkdownNote"}
# A returning user's front-end: no first-run template dialog, no minimap, node text drawn at screenshot zoom.
FRONTEND_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                     "LiteGraph.Canvas.MinFontSizeForLOD": 1}


def _args_of(name):
    return workflow_files.host_args(workflow_files.named_files(WORKFLOWS[name]))


# Runs grouped by the host options their files need, so that each group starts the host once.
RUN_ORDER = sorted(NAMES, key=lambda n: (_args_of(n), n))


# Text and image encoders in bf16 instead of the CPU default fp16: fp16 matrix products are ~10x slower on CPU.
ENCODER_ARGS = ("--bf16-text-enc",)


class Hosts:
    """One running host at a time, over one base directory holding every file the workflows name."""

    def __init__(self, base):
        self.base, self.args, self.server, self._stack = base, None, None, contextlib.ExitStack()

    def get(self, args=()):
        if self.server is None or args != self.args:
            self.close()
            self._stack = contextlib.ExitStack()
            self.server = self._stack.enter_context(comfy_server(self.base, extra_args=ENCODER_ARGS + args))
            self.args = args
        return self.server

    def close(self):
        self._stack.close()
        self.server = None


@pytest.fixture(scope="module")
def hosts(model_files, tmp_path_factory):
    base, cache = tmp_path_factory.mktemp("workflow_host"), tmp_path_factory.mktemp("workflow_files")
    (base / "user" / "default" / "workflows").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(FRONTEND_SETTINGS))
    names = set().union(*(workflow_files.named_files(w) for w in WORKFLOWS.values())) & set(workflow_files.REGISTRY)
    hosts = Hosts(base)
    try:
        workflow_files.provide(names, base, model_files, cache)
        if importlib.util.find_spec("onnx"):  # FaceID workflows: stand-in face model packs
            workflow_files.provide_face_packs(WORKFLOWS.values(), base)
        yield hosts
    finally:
        hosts.close()
        shutil.rmtree(cache, ignore_errors=True)  # the SDXL checkpoint is 3.5 GB


@pytest.fixture(scope="module")
def object_info(hosts):
    return request(hosts.get()["port"], "/object_info")


# ------------------------------------------------------------------------------------------------ static checks

def test_every_use_case_has_a_workflow():
    assert REQUIRED <= set(NAMES), f"missing workflows: {sorted(REQUIRED - set(NAMES))}"


def test_every_named_file_has_a_maker():
    for name, workflow in WORKFLOWS.items():
        unknown = workflow_files.named_files(workflow) - set(workflow_files.REGISTRY)
        assert not unknown, (f"{name}.json names {sorted(unknown)}: add a maker for each to "
                             "tests/workflow_files.py REGISTRY (folder + how to write a stand-in)")


def _check_value(where, value, type_, options):
    if isinstance(type_, list) or type_ == "COMBO":
        allowed = combo_options(type_, options)
        assert value in allowed, f"{where}: {value!r} is not one of the host's options {allowed[:20]}"
    elif type_ in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is no number"
        if type_ == "INT":
            assert float(value).is_integer(), f"{where}: {value!r} is not an integer"
        assert options.get("min", -float("inf")) <= value <= options.get("max", float("inf")), (
            f"{where}: {value} outside [{options.get('min')}, {options.get('max')}]")
    elif type_ == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    elif type_ == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"


def _check_node(name, node, info):
    where = f"{name}.json node {node['id']} ({node['type']})"
    values = widget_values_by_name(node, info)
    raw = node.get("widgets_values") or []
    i = 0
    for input_name, type_, options, required in ordered_inputs(info):
        linked = any(s["name"] == input_name and s.get("link") is not None for s in node.get("inputs") or [])
        if is_widget(type_, options):
            if not linked:
                _check_value(f"{where} '{input_name}'", values[input_name], type_, options)
            if isinstance(raw, list) and has_control_after_generate(input_name, type_, options):
                assert raw[i + 1] in CONTROL_AFTER_GENERATE, f"{where}: control_after_generate {raw[i + 1]!r}"
            i += 1 + extra_widget_values(input_name, type_, options)
        elif required:
            assert linked, f"{where}: required input '{input_name}' ({type_}) is not connected"


@pytest.mark.parametrize("name", NAMES)
def test_workflow_fits_the_host(name, object_info):
    workflow = WORKFLOWS[name]
    nodes = {node["id"]: node for node in workflow["nodes"]}
    unknown = sorted({n["type"] for n in nodes.values()} - set(object_info) - FRONTEND_ONLY)
    assert not unknown, f"{name}.json uses node types the host does not register: {unknown}"
    for node in nodes.values():
        assert node.get("mode", 0) == 0, f"{name}.json node {node['id']} is muted or bypassed"
        if node["type"] not in FRONTEND_ONLY:
            _check_node(name, node, object_info[node["type"]])
    for link_id, origin, origin_slot, target, target_slot, type_ in workflow["links"]:
        out_types = object_info[nodes[origin]["type"]]["output"]
        target_node = nodes[target]
        input_name = target_node["inputs"][target_slot]["name"]
        in_type = next(t for n, t, _, _ in ordered_inputs(object_info[target_node["type"]]) if n == input_name)
        assert out_types[origin_slot] == type_ == in_type, (
            f"{name}.json link {link_id}: output {out_types[origin_slot]} -> input '{input_name}' {in_type}")


def _node_of(workflow, type_):
    return next(n for n in workflow["nodes"] if n["type"] == type_)


@pytest.mark.parametrize("change, message", [
    (lambda w: _node_of(w, "ApplyIPAdapter")["widgets_values"].__setitem__(0, 99.0), "outside"),
    (lambda w: _node_of(w, "LoadIPAdapter")["widgets_values"].__setitem__(0, "renamed.safetensors"), "options"),
    (lambda w: _node_of(w, "KSampler")["widgets_values"].pop(1), "widgets_values"),
    (lambda w: _node_of(w, "KSampler")["widgets_values"].__setitem__(1, "sometimes"), "control_after_generate"),
    (lambda w: _node_of(w, "EmptyLatentImage")["widgets_values"].__setitem__(0, 64.5), "integer"),
    (lambda w: _node_of(w, "ApplyIPAdapter").__setitem__("type", "ApplyIPAdapterV2"), "does not register"),
])
def test_host_fit_check_catches_a_broken_workflow(change, message, object_info, monkeypatch):
    broken = copy.deepcopy(WORKFLOWS[MAIN])
    change(broken)
    monkeypatch.setitem(WORKFLOWS, "broken", broken)
    with pytest.raises((AssertionError, ValueError), match=message):
        test_workflow_fits_the_host("broken", object_info)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_note_says_what_it_is_and_which_files(name):
    notes = [n for n in WORKFLOWS[name]["nodes"] if n["type"] in NOTE_TYPES]
    assert notes, f"{name}.json has no note node"
    text = " ".join(str(v) for n in notes for v in n.get("widgets_values") or [])
    models = {f for f in workflow_files.named_files(WORKFLOWS[name]) if workflow_files.REGISTRY[f].folder != "input"}
    missing = sorted(f for f in models if f not in text)
    assert not missing, f"{name}.json: its note does not name the model files {missing}"


def test_host_lists_the_workflows_as_templates(hosts):
    port = hosts.get()["port"]
    templates = request(port, "/workflow_templates")
    assert sorted(templates.get(EXTENSION_DIR_NAME, [])) == sorted(NAMES), templates
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workflow_templates/{EXTENSION_DIR_NAME}/"
                                f"{MAIN}.json", timeout=30) as resp:
        assert json.loads(resp.read()) == WORKFLOWS[MAIN]


def test_readme_shows_the_main_workflow_and_links_every_workflow():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"(workflows/{name}.json)" in readme, f"README.md does not link workflows/{name}.json"
    assert f"(docs/workflow-{MAIN.replace('_', '-')}.png)" in readme
    assert (REPO / "docs" / f"workflow-{MAIN.replace('_', '-')}.png").is_file()


# ------------------------------------------------------------------------------------------------ browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

LOAD_JS = """async ([workflow, name]) => {
  await app.loadGraphData(workflow, true, true, name);
  await new Promise(r => setTimeout(r, 500));
  await app.extensionManager.command.execute('Comfy.Canvas.FitView');
  const registered = new Set(Object.keys(LiteGraph.registered_node_types));
  return {missing: workflow.nodes.map(n => n.type).filter(t => !registered.has(t)),
          inGraph: app.graph.nodes.length};
}"""
MISSING_DIALOG = "Some Nodes Are Missing"  # the front-end of ComfyUI 0.3.64: a dialog
MISSING_NOTICE = re.compile(r"^Missing nodes?: ")  # newer front-ends (ComfyUI 0.33): a notice naming the node types
PROMPT_JS = "async () => JSON.stringify((await app.graphToPrompt()).output)"


NO_BROWSER_REASON = (
    "no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it): browser tests skipped"
    if CHROMIUM is None else "playwright not installed (pip install -r requirements-dev.txt): browser tests skipped"
    if importlib.util.find_spec("playwright") is None else None)
needs_browser = pytest.mark.skipif(NO_BROWSER_REASON is not None, reason=NO_BROWSER_REASON or "")


@pytest.fixture(scope="module")
def page(hosts, tmp_path_factory):
    import playwright.sync_api as playwright
    server = hosts.get()
    ARTIFACTS.mkdir(exist_ok=True)
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
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph && "
                                   "Object.keys(LiteGraph.registered_node_types).includes('ApplyIPAdapter')",
                                   timeout=120_000)
            page.wait_for_timeout(2000)  # let start-up requests settle (user.css etc. answer 404 on a new user)
            page.errors = errors
            yield page
        finally:
            context.close()


def _load(page, workflow, name):
    page.errors.clear()
    loaded = page.evaluate(LOAD_JS, [workflow, name])
    page.wait_for_timeout(300)
    loaded["dialog"] = page.get_by_text(MISSING_DIALOG).count() + page.get_by_text(MISSING_NOTICE).count() > 0
    return loaded


@needs_browser
def test_browser_reports_a_missing_node_type(page):
    """The checks below can fail: a workflow with an unknown node type is caught by both."""
    broken = copy.deepcopy(WORKFLOWS[MAIN])
    broken["nodes"][0]["type"] = "NoSuchNodeType"
    loaded = _load(page, broken, "broken.json")
    assert loaded["missing"] == ["NoSuchNodeType"] and loaded["dialog"]
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    assert page.get_by_text(MISSING_DIALOG).count() == 0
    assert not _load(page, WORKFLOWS[MAIN], f"{MAIN}.json")["dialog"]  # the next workflow starts clean


@needs_browser
@pytest.mark.parametrize("name", NAMES)
def test_browser_loads_workflow(page, name, object_info):
    loaded = _load(page, WORKFLOWS[name], f"{name}.json")
    assert loaded["missing"] == [], f"{name}.json: missing node types in the front-end: {loaded['missing']}"
    assert not loaded["dialog"], f"{name}.json: the front-end reports missing nodes"
    assert loaded["inGraph"] == len(WORKFLOWS[name]["nodes"])
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"workflow-{name.replace('_', '-')}.png"))
    assert page.errors == [], f"{name}.json: console errors while loading: {page.errors}"
    frontend = json.loads(page.evaluate(PROMPT_JS))
    ours = to_api(WORKFLOWS[name], object_info)
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa
    assert strip(frontend) == ours, f"{name}.json: the front-end's API graph differs from the one the tests run"


@needs_browser
def test_browser_queues_image_variation_and_shows_the_image(page, hosts):
    server = hosts.get()
    workflow = copy.deepcopy(WORKFLOWS[MAIN])
    _load(page, workflow, f"{MAIN}.json")
    page.evaluate("""([size, steps]) => {
      for (const node of app.graph.nodes) for (const w of node.widgets || []) {
        if (w.name === 'width' || w.name === 'height') w.value = size;
        if (w.name === 'steps') w.value = steps;
      }
    }""", [TEST_SIZE, TEST_STEPS])
    before = set(request(server["port"], "/history"))
    page.evaluate("() => app.queuePrompt(0, 1)")
    try:
        page.wait_for_function("""() => app.graph.nodes.some(n => n.type === 'SaveImage' && n.imgs && n.imgs.length
                                  && n.imgs[0].complete && n.imgs[0].naturalWidth > 0)""", timeout=300_000)
    except Exception:
        runs = {k: v.get("status") for k, v in request(server["port"], "/history").items() if k not in before}
        raise AssertionError(f"no image in the page; runs queued from it: {json.dumps(runs)[:3000]}; console: "
                             f"{page.errors}; host log: {server['log'].read_text()[-3000:]}") from None
    shown = page.evaluate("""() => { const n = app.graph.nodes.find(n => n.type === 'SaveImage');
                              return [n.imgs[0].src, n.imgs[0].naturalWidth, n.imgs[0].naturalHeight]; }""")
    assert "/view?" in shown[0] and "filename=" in shown[0], shown
    assert shown[1:] == [TEST_SIZE, TEST_SIZE]
    page.screenshot(path=str(ARTIFACTS / f"workflow-{MAIN.replace('_', '-')}-result.png"))
    assert page.errors == [], f"console errors while running {MAIN}: {page.errors}"
    assert list((server["base"] / "output").rglob("image_variation*.png")), "no image in the host's output"


# ------------------------------------------------------------------------------------------------ host runs

def shrink(prompt):
    """Test-sized copy of an API prompt: 64 px latents, 2 steps. Everything else is as shipped."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        for key in ("width", "height"):
            if isinstance(node["inputs"].get(key), int):
                node["inputs"][key] = TEST_SIZE
        if isinstance(node["inputs"].get("steps"), int):
            node["inputs"]["steps"] = TEST_STEPS
    return prompt


@pytest.mark.parametrize("name", RUN_ORDER)
def test_workflow_runs_to_an_image(name, hosts, object_info):
    if any(n["type"] == "LoadFaceAnalysis" for n in WORKFLOWS[name]["nodes"]):
        for module in ("onnx", "onnxruntime"):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{name}: {module} not installed (requirements-dev.txt / requirements-faceid.txt)")
    reason = workflow_files.not_runnable(workflow_files.named_files(WORKFLOWS[name]))
    if reason:  # checked statically and loaded in the browser above, not run (README "Flux")
        pytest.skip(f"{name}.json is not run: {reason}")
    server = hosts.get(_args_of(name))
    prompt = shrink(to_api(WORKFLOWS[name], object_info))
    started = time.time()
    result = run_prompt(server["port"], prompt)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000]
    saves = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    assert saves, f"{name}.json has no Save Image node"
    for key in saves:
        image = result["outputs"][key]["images"][0]
        path = server["base"] / "output" / image.get("subfolder", "") / image["filename"]
        with Image.open(path) as img:
            assert img.size == (TEST_SIZE, TEST_SIZE)
            assert np.asarray(img).std() > 0, f"{name}: blank image"
    print(f"{name}: {time.time() - started:.1f} s")
