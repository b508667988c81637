"""The two saved-graph formats the converter edits, behind one small interface.

UI format (what the front-end saves): ``nodes`` (each with ``inputs`` [{name, type, link}], ``outputs``
[{name, type, links}], ``widgets_values`` in widget order, ``pos``), ``links`` as
``[id, origin, origin_slot, target, target_slot, type]``, ``last_node_id`` / ``last_link_id``; groups and every
other key are left as they are. API format (what ``POST /prompt`` takes): ``{id: {"class_type", "inputs"}}`` with
a link written as ``[origin id, origin slot]``.

An incoming connection is addressed by (node id, input name), an outgoing one by the handle ``outgoing`` gives.
"""
NODE_WIDTH, ROW, GAP = 320, 26, 40
OPTIONAL_SHAPE = 7  # how the front-end marks an optional socket


def _size(node) -> tuple[float, float]:
    size = node.get("size") or [NODE_WIDTH, 100]
    return (size["0"], size["1"]) if isinstance(size, dict) else (size[0], size[1])


def _pos(node) -> tuple[float, float]:
    pos = node.get("pos") or [0, 0]
    return (pos["0"], pos["1"]) if isinstance(pos, dict) else (pos[0], pos[1])


class UIGraph:
    def __init__(self, workflow: dict):
        self.w = workflow
        self.nodes = {node["id"]: node for node in workflow["nodes"]}
        self.links = {}
        self.link_objects = any(isinstance(link, dict) for link in workflow["links"])
        for link in workflow["links"]:
            if isinstance(link, dict):  # some front-end versions write objects; written back the same way
                link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                        link["type"]]
            self.links[link[0]] = link
        self.order = max((n.get("order", 0) for n in workflow["nodes"]), default=0)

    # ---- reading
    def ids(self):
        return list(self.nodes)

    def type(self, nid):
        return self.nodes[nid]["type"]

    def mode(self, nid):
        return self.nodes[nid].get("mode", 0)

    def widget_values(self, nid, names) -> dict:
        values = self.nodes[nid].get("widgets_values") or []
        if isinstance(values, dict):
            return {n: values[n] for n in names if n in values}
        return dict(zip(names, values))

    def incoming(self, nid) -> dict:
        """{input name: (origin id, origin slot)} of the linked inputs."""
        out = {}
        for slot in self.nodes[nid].get("inputs") or []:
            if slot.get("link") is not None and slot["link"] in self.links:
                out[slot["name"]] = tuple(self.links[slot["link"]][1:3])
        return out

    def outgoing(self, nid) -> dict:
        """{output slot: [link ids]} of the used outputs."""
        return {i: [l for l in out.get("links") or [] if l in self.links]
                for i, out in enumerate(self.nodes[nid].get("outputs") or []) if out.get("links")}

    def origin(self, nid, slot):
        """The node output behind (nid, slot), through reroutes."""
        while self.nodes.get(nid, {}).get("type") == "Reroute":
            links = [s.get("link") for s in self.nodes[nid].get("inputs") or [] if s.get("link") is not None]
            if not links:
                return None
            nid, slot = self.links[links[0]][1:3]
        return nid, slot

    # ---- writing
    def _input_index(self, nid, name):
        return next(i for i, s in enumerate(self.nodes[nid]["inputs"]) if s["name"] == name)

    def rewrite(self, nid, type_, inputs, outputs, widgets_values):
        """Give node ``nid`` a new type and slots; its incoming and outgoing links must be re-attached after."""
        node = self.nodes[nid]
        node.update(type=type_, inputs=inputs, outputs=outputs, widgets_values=widgets_values)
        node.setdefault("properties", {})["Node name for S&R"] = type_

    def add(self, type_, inputs, outputs, widgets_values, near, below=True, mode=0):
        nid = self.w["last_node_id"] = max([self.w.get("last_node_id", 0), *self.nodes]) + 1
        x, y = _pos(self.nodes[near])
        w, h = _size(self.nodes[near])
        pos = [x, y + h + GAP] if below else [x - NODE_WIDTH - GAP, y]
        self.order += 1
        node = {"id": nid, "type": type_, "pos": pos, "size": [NODE_WIDTH, ROW * (len(inputs) + 1) + 30],
                "flags": {}, "order": self.order, "mode": mode, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": type_}, "widgets_values": widgets_values}
        self.w["nodes"].append(node)
        self.nodes[nid] = node
        return nid

    def connect(self, origin, slot, nid, name, type_, link_id=None):
        """A link from (origin, slot) to input ``name`` of ``nid``: ``link_id`` moved there, or a new one."""
        if link_id is None:
            link_id = self.w["last_link_id"] = max([self.w.get("last_link_id", 0), *self.links]) + 1
            self.links[link_id] = [link_id, origin, slot, None, None, type_]
        else:
            self._unlist(link_id)
        index = self._input_index(nid, name)
        self.links[link_id][1:] = [origin, slot, nid, index, type_]
        self.nodes[nid]["inputs"][index]["link"] = link_id
        out = self.nodes[origin]["outputs"][slot]
        out["links"] = [*(out.get("links") or []), link_id]
        return link_id

    def _unlist(self, link_id):
        origin, slot = self.links[link_id][1:3]
        outputs = self.nodes.get(origin, {}).get("outputs") or []
        if slot < len(outputs) and link_id in (outputs[slot].get("links") or []):
            outputs[slot]["links"] = [l for l in outputs[slot]["links"] if l != link_id] or None

    def drop(self, link_id):
        """Remove a link from both of its ends."""
        if link_id not in self.links:
            return
        self._unlist(link_id)
        target = self.nodes.get(self.links[link_id][3])
        for slot in (target or {}).get("inputs") or []:
            if slot.get("link") == link_id:
                slot["link"] = None
        del self.links[link_id]

    def repoint(self, link_id, origin, slot, type_):
        """An outgoing link of a rewritten node, now leaving from (origin, slot)."""
        self.links[link_id][1:3] = [origin, slot]
        self.links[link_id][5] = type_
        out = self.nodes[origin]["outputs"][slot]
        out["links"] = [*(out.get("links") or []), link_id]

    def input_link(self, nid, name):
        return next((s.get("link") for s in self.nodes[nid].get("inputs") or [] if s["name"] == name), None)

    def remove(self, nid):
        for slot in self.nodes[nid].get("inputs") or []:
            if slot.get("link") is not None:
                self.drop(slot["link"])
        for links in self.outgoing(nid).values():
            for link_id in links:
                self.drop(link_id)
        self.w["nodes"] = [n for n in self.w["nodes"] if n["id"] != nid]
        del self.nodes[nid]

    def finish(self) -> dict:
        self.w["links"] = [self.links[k] for k in sorted(self.links)]
        if self.link_objects:
            fields = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
            self.w["links"] = [dict(zip(fields, link)) for link in self.w["links"]]
        self.w["last_node_id"] = max([self.w.get("last_node_id", 0), *self.nodes], default=0)
        self.w["last_link_id"] = max([self.w.get("last_link_id", 0), *self.links], default=0)
        return self.w


def is_api(workflow) -> bool:
    return isinstance(workflow, dict) and "nodes" not in workflow and all(
        isinstance(v, dict) and "class_type" in v for v in workflow.values())


def api_to_ui(prompt: dict) -> tuple[dict, dict]:
    """An API prompt as a UI-like workflow (widgets as {name: value}) and the map of its ids back to the prompt's."""
    ids, numbered = {}, [int(k) for k in prompt if str(k).isdigit()]
    spare = max(numbered, default=0) + 100_000
    for key in prompt:
        ids[key] = int(key) if str(key).isdigit() else (spare := spare + 1)
    nodes, links, slots = [], [], {}
    for key, node in prompt.items():
        inputs, widgets = [], {}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and value[0] in prompt:
                links.append([len(links) + 1, ids[value[0]], value[1], ids[key], len(inputs), "*"])
                slots[ids[value[0]]] = max(slots.get(ids[value[0]], 0), value[1] + 1)
                inputs.append({"name": name, "type": "*", "link": len(links)})
            else:
                widgets[name] = value
        nodes.append({"id": ids[key], "type": node["class_type"], "inputs": inputs, "widgets_values": widgets,
                      "_meta": node.get("_meta")})
    for node in nodes:
        node["outputs"] = [{"name": str(i), "type": "*", "links": []} for i in range(slots.get(node["id"], 0))]
    for link in links:
        node = next(n for n in nodes if n["id"] == link[1])
        node["outputs"][link[2]]["links"].append(link[0])
    back = {v: k for k, v in ids.items()}
    return {"nodes": nodes, "links": links, "last_node_id": max(ids.values(), default=0),
            "last_link_id": len(links)}, back


def ui_to_api(workflow: dict, back: dict) -> dict:
    """The API prompt of a converted UI-like workflow (inverse of api_to_ui; new nodes get their own ids)."""
    key = {n["id"]: back.get(n["id"], str(n["id"])) for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        inputs = dict(node.get("widgets_values") or {})
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [key[link[1]], link[2]]
        prompt[key[node["id"]]] = {"class_type": node["type"], "inputs": inputs}
        if node.get("_meta"):
            prompt[key[node["id"]]]["_meta"] = node["_meta"]
    return prompt
