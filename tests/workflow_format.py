"""UI-format workflows (what the front-end saves and loads) read against the host's ``/object_info``.

:func:`to_api` turns a UI workflow into the API format ``POST /prompt`` takes, the way the front-end's
``graphToPrompt`` does: front-end-only nodes (notes, reroutes) are left out, links through reroutes are followed,
and each node's ``widgets_values`` are matched to its widget inputs in ``/object_info`` order, skipping the values
of widgets the front-end adds itself (``control_after_generate`` after a seed, the upload button of an image
input). The browser test checks that the real front-end gives the same graph.
"""
import json

# Node types that exist only in the front-end: never sent to the host.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_AFTER_GENERATE = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
MODE_ALWAYS = 0


def load(path):
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list) or "links" not in workflow:
        raise ValueError(f"{path}: not a UI-format workflow (a JSON object with 'nodes' and 'links')")
    return workflow


def ordered_inputs(info):
    """[(name, type, options, required)] of a node's inputs in the order the front-end creates them."""
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, spec[0], options, section == "required"))
    return out


def is_widget(type_, options):
    return (isinstance(type_, list) or type_ in WIDGET_TYPES) and not options.get("forceInput")


def combo_options(type_, options):
    """The allowed values of a COMBO input (old style: the list is the type; new style: 'COMBO' + options)."""
    return type_ if isinstance(type_, list) else options.get("options", [])


def extra_widget_values(name, type_, options):
    """How many values the front-end serialises after this widget for widgets it adds itself."""
    return int(has_control_after_generate(name, type_, options)) + int(any(options.get(k) for k in UPLOAD_OPTIONS))


def has_control_after_generate(name, type_, options):
    """The front-end adds a control_after_generate combo after seed inputs and inputs that ask for one."""
    return bool(options.get("control_after_generate")) or (type_ == "INT" and name in SEED_NAMES)


def widget_values_by_name(node, info):
    """{input name: value} from a node's ``widgets_values``; raises ValueError when the count does not fit (optional
    widgets missing at the end, as in a graph saved before they were added, get their defaults)."""
    values = node.get("widgets_values") or []
    if isinstance(values, dict):  # some front-end versions save {name: value}
        return dict(values)
    out, i = {}, 0
    for name, type_, options, required in ordered_inputs(info):
        if not is_widget(type_, options):
            continue
        if i >= len(values) and not required and "default" in options:
            out[name] = options["default"]  # a graph saved before this optional widget existed: the front-end
            continue  # gives it its default
        if i >= len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): no value for widget '{name}' in "
                             f"widgets_values {values}")
        out[name] = values[i]
        i += 1 + extra_widget_values(name, type_, options)
    if i != len(values):
        raise ValueError(f"node {node['id']} ({node['type']}): widgets_values {values} has {len(values)} values, "
                         f"the host's inputs ask for {i}")
    return out


def _links(workflow):
    """{link id: (origin node id, origin slot)}; UI links are [id, origin, slot, target, target slot, type]."""
    out = {}
    for link in workflow["links"]:
        link_id, origin, slot = (link["id"], link["origin_id"], link["origin_slot"]) if isinstance(link, dict) \
            else link[:3]
        out[link_id] = (origin, slot)
    return out


def _source(link_id, links, nodes):
    """Follow a link back through reroutes to the node output that feeds it."""
    origin, slot = links[link_id]
    while nodes[origin]["type"] == "Reroute":
        origin, slot = links[nodes[origin]["inputs"][0]["link"]]
    return [str(origin), slot]


def to_api(workflow, object_info):
    """The API-format prompt ``{node id: {"class_type", "inputs"}}`` of a UI workflow."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = _links(workflow)
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            continue
        info = object_info[node["type"]]
        inputs = widget_values_by_name(node, info)
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None:
                inputs[slot["name"]] = _source(slot["link"], links, nodes)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
