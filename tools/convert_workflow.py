"""Convert workflows saved with cubiq/ComfyUI_IPAdapter_plus (the incumbent) to this extension's nodes.

    python -m tools.convert_workflow IN.json OUT.json [--family sd15|sdxl] [--report REPORT.json]
    python -m tools.convert_workflow --folder IN_DIR OUT_DIR

UI-format (saved from the canvas) and API-format (``POST /prompt``) files. Every incumbent node is rewritten as
the mapping in tools/incumbent_nodes.py says; positions, groups, links and every other node are kept. An apply
node becomes Encode Image Prompt → Apply (new node and link ids are allocated after the file's last ones).
What cannot be mapped is kept as it is and reported with the reason; the report goes to stdout (and to
``--report`` as JSON).
"""
import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import incumbent_nodes as data
    from workflow_graph import UIGraph, api_to_ui, is_api, ui_to_api
else:
    from . import incumbent_nodes as data
    from .workflow_graph import UIGraph, api_to_ui, is_api, ui_to_api

LOADERS = ("IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderFaceID", "IPAdapterUnifiedLoaderCommunity",
           "IPAdapterModelLoader", "IPAdapterInsightFaceLoader")
PREP = "PrepImageForClipVision"
ENCODERS = {"image": "EncodeImagePrompt", "tiles": "EncodeImagePromptTiled", "enhancer": "EncodeImagePromptTiled",
            "face": "EncodeFacePrompt", "style_composition": "EncodeImagePrompt"}


@dataclass
class Report:
    converted: list = field(default_factory=list)  # {"node", "from", "to": [[id, type]], "notes": [...]}
    kept: list = field(default_factory=list)  # {"node", "type", "why"}

    def as_dict(self):
        return {"converted": self.converted, "kept": self.kept}

    def lines(self):
        for entry in self.converted:
            made = " + ".join(f"{t} {i}" for i, t in entry["to"])
            yield f"node {entry['node']} {entry['from']} -> {made}"
            yield from (f"    {note}" for note in entry["notes"])
        for entry in self.kept:
            yield f"node {entry['node']} {entry['type']}: kept as it is ({entry['why']})"


class Made:
    """A node this conversion wrote: its target and widget values by name."""

    def __init__(self, type_):
        self.type, self.target, self.widgets = type_, data.TARGETS[type_], {}


def _slot_entries(target):
    """The front-end's input list: sockets first, then widgets, each in schema order."""
    ins = target.inputs
    entries = []
    for i in [i for i in ins if not i.widget] + [i for i in ins if i.widget]:
        entry = {"name": i.name, "type": i.type, "link": None}
        if i.optional and not i.widget:
            entry["shape"] = 7
        if i.widget:
            entry["widget"] = {"name": i.name}
        entries.append(entry)
    return entries


def _widget_list(made: Made):
    """widgets_values in widget order (the node's values, the defaults for the rest)."""
    out = []
    for i in (i for i in made.target.inputs if i.widget):
        out.append(made.widgets.get(i.name, i.default))
        if i.control:
            out.append("fixed")
    return out


class Converter:
    def __init__(self, graph: UIGraph, api: bool, family: str | None = None):
        self.g, self.api, self.family = graph, api, family
        self.report, self.made = Report(), {}
        self.loader_lora, self.face_loaders = {}, {}

    # ---- node bookkeeping
    def _new(self, type_, near, below=True):
        made = Made(type_)
        nid = self.g.add(type_, _slot_entries(made.target), self._outputs(made), [], near, below,
                         self.g.mode(near))
        self.made[nid] = made
        return nid

    @staticmethod
    def _outputs(made):
        return [{"name": n, "type": t, "links": None} for n, t in made.target.outputs]

    def set_widget(self, nid, name, value):
        self.made[nid].widgets[name] = value

    def link(self, origin, slot, nid, name, link_id=None):
        type_ = next(i.type for i in self.made[nid].target.inputs if i.name == name)
        return self.g.connect(origin, slot, nid, name, type_, link_id)

    def finish(self):
        for nid, made in self.made.items():
            node = self.g.nodes[nid]
            node["widgets_values"] = ({i.name: made.widgets.get(i.name, i.default) for i in made.target.inputs
                                       if i.widget} if self.api else _widget_list(made))
        return self.g.finish()

    # ---- one incumbent node
    def convert(self, nid):
        type_ = self.g.type(nid)
        rule = data.RULES[type_]
        if rule.target is None:
            self.report.kept.append({"node": nid, "type": type_, "why": rule.why})
            return
        node = self.g.nodes[nid]
        values = {name: default for name, default in rule.widgets}
        values.update(self.g.widget_values(nid, [name for name, _ in rule.widgets]))
        lost = [n for n in rule.essential if rule.values[n].get(values[n], values[n]) is None]
        if lost:
            why = data.NO_PRESET.get(values[lost[0]], "no equivalent")
            self.report.kept.append({"node": nid, "type": type_, "why": f"{lost[0]} '{values[lost[0]]}': {why}"})
            return
        in_links = {s["name"]: s["link"] for s in node.get("inputs") or [] if s.get("link") in self.g.links}
        out_links = self.g.outgoing(nid)
        entry = {"node": nid, "from": type_, "to": [[nid, rule.target]], "notes": []}
        self.report.converted.append(entry)
        self.made[nid] = made = Made(rule.target)
        self.g.rewrite(nid, rule.target, _slot_entries(made.target), self._outputs(made), [])
        keys = {"main": nid, **self._encoders(nid, rule, values, entry)}
        for name, default in rule.widgets:  # linked ones too: the front-end keeps a linked widget's value
            self._widget(keys, rule, name, values[name], default, entry["notes"])
        for name, value in rule.fixed.items():
            self.set_widget(nid, name, value)
        ipadapter = in_links.get("ipadapter")
        loader = self.g.origin(*self.g.links[ipadapter][1:3]) if ipadapter is not None else None
        for name, link_id in in_links.items():
            self._incoming(keys, rule, name, link_id, entry["notes"])
        self._from_loader(keys, rule, in_links, loader, entry["notes"])
        for slot, links in out_links.items():
            self._outgoing(keys, rule, slot, links, entry["notes"])
        if type_ == "IPAdapterUnifiedLoaderFaceID":
            self.loader_lora[nid] = values["lora_strength"]

    def _encoders(self, nid, rule, values, entry):
        """The encode node(s) an apply node needs, linked into it (through Combine Image Prompts when its
        combine_embeds is not concat)."""
        if not rule.encode:
            return {}
        keys = {"encode": self._new(ENCODERS[rule.encode], nid)}
        if rule.encode in ("tiles", "enhancer"):
            self.set_widget(keys["encode"], "tile_mode", rule.encode)
        if rule.encode == "style_composition":
            keys["encode2"] = self._new("EncodeImagePrompt", keys["encode"])
            self.link(keys["encode"], 0, nid, "image_prompt_style")
            self.link(keys["encode2"], 0, nid, "image_prompt_composition")
        else:
            feed = keys["encode"]
            method = values.get(rule.combine, "concat") if rule.combine else "concat"
            if method != "concat" and not rule.fixed.get("unfold_batch"):
                keys["combine"] = self._new("CombineImagePrompts", feed)
                self.set_widget(keys["combine"], "method", data.COMBINE[method])
                self.link(feed, 0, keys["combine"], "image_prompt")
                feed = keys["combine"]
            self.link(feed, 0, nid, "image_prompt")
        entry["to"] += [[k, self.made[k].type] for k in keys.values()]
        return keys

    def _widget(self, keys, rule, name, value, default, notes):
        if name == rule.combine:
            return  # made into a Combine Image Prompts node (or nothing, for concat)
        if rule.target == "ApplyIPAdapterAdvanced" and name == "layer_weights":
            return self._layer_weights(keys["main"], value, notes)
        if name not in rule.to:
            if value != default and value is not None:
                notes.append(f"{name} = {value!r} not converted: {rule.drop.get(name, 'no equivalent input')}")
            return
        key, ours = rule.to[name]
        if key not in keys:
            return
        table = rule.values.get(name)
        if table is not None:
            if table.get(value, value) is None:
                notes.append(f"{name} '{value}' is not supported here: {ours} left at its default")
                return
            if value not in table:
                notes.append(f"{name} '{value}' is not one of the incumbent's options: kept as it is")
            value = table.get(value, value)
        if name == "frames" and rule.target == "IPAdapterFrameWeights":
            value = max(value, 2)  # the incumbent draws its curves over at least 2 frames
        if name == "encode_batch_size":
            if not value:
                return
            value = min(value, 256)
        self.set_widget(keys[key], ours, value)

    def _layer_weights(self, nid, text, notes):
        """IPAdapterMS's "i:w, ..." (its block numbers) -> custom_layer_weights by block name."""
        if not str(text).strip():
            return
        try:
            pairs = [(int(i), float(w)) for i, w in (item.split(":") for item in str(text).split(",") if item.strip())]
        except ValueError:
            notes.append(f"layer_weights {text!r} not read (expected 'index:weight, ...'): not converted")
            return
        family = self.family or ("sd15" if max(i for i, _ in pairs) >= len(data.INCUMBENT_BLOCKS["sdxl"]) else
                                 "sdxl" if len(pairs) == len(data.INCUMBENT_BLOCKS["sdxl"]) else None)
        if family is None:
            family = "sdxl"
            notes.append("layer_weights: SD1.5 or SDXL numbering cannot be told from the entries; read as SDXL "
                         "(convert again with --family sd15 for an SD1.5 model)")
        blocks = data.INCUMBENT_BLOCKS[family]
        made = self.made[nid]
        if made.widgets.get("layer_weights") in ("style transfer precise", "composition precise"):
            notes.append(f"weight_type '{made.widgets['layer_weights']}' with layer_weights: the per-layer weights "
                         "are kept, the precise variant's uncond tokens are not")
        self.set_widget(nid, "layer_weights", "custom")
        self.set_widget(nid, "custom_layer_weights", ", ".join(f"{blocks[i]}={w:g}" for i, w in pairs
                                                                 if i < len(blocks)))
        notes.append(f"layer_weights (the incumbent's {family} block numbers) -> custom_layer_weights by block")

    def _destinations(self, rule, name):
        if rule.encode == "style_composition" and name in STYLE_COMPOSITION_INPUTS:
            return STYLE_COMPOSITION_INPUTS[name]
        return [rule.to[name]] if name in rule.to else []

    def _incoming(self, keys, rule, name, link_id, notes):
        origin, slot = self.g.links[link_id][1:3]
        source = self.g.origin(origin, slot)
        if name == "weight" and source and self.g.type(source[0]) == "IPAdapterFrameWeights" \
                and rule.target == "ApplyIPAdapterAdvanced":
            self.link(origin, slot, keys["main"], "frame_weights", link_id)
            self.set_widget(keys["main"], "weight", 1.0)
            notes.append("weight from IPAdapterWeights -> frame_weights (weight 1.0 times the weight per frame)")
            return
        places = [(key, ours) for key, ours in self._destinations(rule, name) if key in keys]
        if not places:
            self.g.drop(link_id)
            notes.append(f"input {name} not converted, its link removed: {rule.drop.get(name, 'no equivalent')}")
            return
        for i, (key, ours) in enumerate(places):
            self.link(origin, slot, keys[key], ours, link_id if i == 0 else None)

    def _from_loader(self, keys, rule, in_links, loader, notes):
        """What the incumbent's unified loaders passed inside their IPADAPTER pipe: the CLIP vision model, the
        face analysis model and the FaceID LoRA strength, wired from the converted loader."""
        encoders = [keys[k] for k in ("encode", "encode2") if k in keys]
        if rule.target == "EncodeImagePrompt":
            encoders = [keys["main"]]
        if not encoders:
            return
        by_preset = loader is not None and self.g.type(loader[0]) == "LoadIPAdapterByPreset"
        if "clip_vision" not in in_links:
            if by_preset:
                for enc in encoders:
                    self.link(loader[0], 2, enc, "clip_vision")
            elif rule.encode != "face":
                notes.append("clip_vision: connect a Load CLIP Vision to the Encode node (the adapter does not "
                             "come from a unified loader)")
        if rule.encode == "face" and by_preset and loader[0] in self.loader_lora:
            self.set_widget(keys["main"], "lora_strength", self.loader_lora[loader[0]])
            if "insightface" not in in_links:
                self.link(self._face_loader(loader[0]), 0, encoders[0], "face_analysis")

    def _face_loader(self, loader):
        """One Load Face Analysis per converted FaceID loader (the incumbent loaded insightface inside it)."""
        if loader not in self.face_loaders:
            self.face_loaders[loader] = self._new("LoadFaceAnalysis", loader)
            entry = next(e for e in self.report.converted if e["node"] == loader)
            entry["to"].append([self.face_loaders[loader], "LoadFaceAnalysis"])
        return self.face_loaders[loader]

    def _outgoing(self, keys, rule, slot, links, notes):
        if slot in rule.outputs and rule.outputs[slot][0] in keys:
            key, ours = rule.outputs[slot]
            type_ = self.made[keys[key]].target.outputs[ours][1]
            for link_id in links:
                self.g.repoint(link_id, keys[key], ours, type_)
            return
        for link_id in links:
            self.g.drop(link_id)
        notes.append(f"output {slot} not converted, its links removed: {rule.drop.get(slot, 'no equivalent output')}")

    # ---- PrepImageForClipVision, folded into the encoders it feeds
    def fold_prep(self, nid):
        rule = data.RULES[PREP]
        values = {name: default for name, default in rule.widgets}
        values.update(self.g.widget_values(nid, list(values)))
        links = [l for ls in self.g.outgoing(nid).values() for l in ls]
        targets = [(self.g.links[l][3], self.g.nodes[self.g.links[l][3]]["inputs"][self.g.links[l][4]]["name"])
                   for l in links]
        source = self.g.input_link(nid, "image")
        folded = [(link_id, t, name) for link_id, (t, name) in zip(links, targets) if t in self.made
                  and self.made[t].type in ("EncodeImagePrompt", "EncodeImagePromptTiled")
                  and name in ("image", "negative_image")]
        if source is None or not folded:
            self.report.kept.append({"node": nid, "type": PREP, "why": "it feeds no Encode Image Prompt: crop "
                                     "with Encode Image Prompt's fit instead"})
            return
        origin, slot = self.g.links[source][1:3]
        notes = self._prep_settings(values, [t for _, t, name in folded if name == "image"] or [folded[0][1]])
        for link_id, target, name in folded:
            self.link(origin, slot, target, name, link_id)
        entry = {"node": nid, "from": PREP, "to": [[t, self.made[t].type] for _, t, _ in folded],
                 "notes": ["folded into the encoder(s) it fed", *notes]}
        if len(folded) == len(links):
            self.g.remove(nid)
        else:
            entry["notes"].append("kept as well, for the other nodes it feeds")
            self.report.kept.append({"node": nid, "type": PREP, "why": "it also feeds other nodes than Encode "
                                     "Image Prompt"})
        self.report.converted.append(entry)

    def _prep_settings(self, values, encoders):
        notes = []
        interpolation = data.INTERPOLATION.get(values["interpolation"])
        if interpolation is None:
            notes.append(f"interpolation {values['interpolation']} is not supported: left at the default")
        for enc in encoders:
            if self.made[enc].type == "EncodeImagePrompt":
                self.set_widget(enc, "fit", data.CROP.get(values["crop_position"], "center crop"))
                if interpolation is not None:
                    self.set_widget(enc, "interpolation", interpolation)
                if values["sharpening"]:
                    self.set_widget(enc, "sharpening", values["sharpening"])
        return notes

    # ---- the whole graph
    def run(self):
        incumbent = [n for n in self.g.ids() if self.g.type(n) in data.RULES]
        first = [n for n in incumbent if self.g.type(n) in LOADERS]
        helpers = [n for n in incumbent if data.RULES[self.g.type(n)].encode == "" and n not in first
                   and self.g.type(n) != PREP]
        applies = [n for n in incumbent if data.RULES[self.g.type(n)].encode]
        for nid in first + helpers + applies:
            self.convert(nid)
        for nid in [n for n in incumbent if self.g.type(n) == PREP]:
            self.fold_prep(nid)
        return self.finish()


STYLE_COMPOSITION_INPUTS = {
    "image_style": [("encode", "image")], "image_composition": [("encode2", "image")],
    "image_negative": [("encode", "negative_image"), ("encode2", "negative_image")],
    "clip_vision": [("encode", "clip_vision"), ("encode2", "clip_vision")],
}


def convert(workflow: dict, family: str | None = None) -> tuple[dict, Report]:
    """A converted copy of a UI- or API-format workflow and the report of what was (not) converted."""
    if is_api(workflow):
        ui, back = api_to_ui(copy.deepcopy(workflow))
        converter = Converter(UIGraph(ui), api=True, family=family)
        return ui_to_api(converter.run(), back), converter.report
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list) or "links" not in workflow:
        raise ValueError("not a ComfyUI workflow: expected a UI-format graph ('nodes', 'links') or an API-format "
                         "prompt ({id: {'class_type', 'inputs'}})")
    if workflow.get("definitions", {}).get("subgraphs"):
        raise ValueError("workflows with subgraphs are not converted: unpack the subgraphs first")
    converter = Converter(UIGraph(copy.deepcopy(workflow)), api=False, family=family)
    return converter.run(), converter.report


def convert_file(src: Path, dst: Path, family=None, out=sys.stdout) -> Report:
    workflow = json.loads(Path(src).read_text(encoding="utf-8"))
    converted, report = convert(workflow, family)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_text(json.dumps(converted, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"{src} -> {dst}", file=out)
    for line in report.lines():
        print(f"  {line}", file=out)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.convert_workflow", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a workflow .json (or, with --folder, a folder of them)")
    parser.add_argument("target", help="the converted .json (or, with --folder, a folder)")
    parser.add_argument("--folder", action="store_true", help="convert every .json of a folder")
    parser.add_argument("--family", choices=("sd15", "sdxl"), help="for IPAdapterMS layer weights, when the "
                        "entries cannot tell")
    parser.add_argument("--report", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    pairs = ([(p, Path(args.target) / p.name) for p in sorted(Path(args.source).glob("*.json"))] if args.folder
             else [(Path(args.source), Path(args.target))])
    reports, failed = {}, 0
    for src, dst in pairs:
        try:
            reports[str(src)] = convert_file(src, dst, args.family).as_dict()
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            failed += 1
            print(f"{src}: not converted: {exc}", file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps(reports, indent=2), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
