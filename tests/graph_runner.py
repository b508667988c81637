"""Run API-format graphs in-process through the host's own validation (``execution.validate_prompt``) and executor
(``execution.PromptExecutor``, under its inference mode), as the server does for a queued prompt.

Python objects enter a graph through ``Provide<TYPE>`` source nodes (a ``key`` widget names the value in
``VALUES``) and results leave through ``Keep`` (an output node that stores what it receives), so a test can feed a
node exactly the values a user's graph or script would and read what comes out. Callers have run
``conftest.import_extension()`` first.
"""
import asyncio
import copy
import itertools
import uuid
from dataclasses import dataclass, field

import execution
import nodes as host_nodes

VALUES: dict = {}
KEPT: dict = {}
TYPES = ("MODEL", "IPADAPTER", "IMAGE_PROMPT", "CLIP_VISION", "IMAGE", "MASK", "FLOAT", "STRING", "INT",
         "IPADAPTER_FRAME_WEIGHTS", "FACE_ANALYSIS", "CONDITIONING")
_ids = itertools.count()


def _provider(type_name: str):
    class Provide:
        RETURN_TYPES = (type_name,)
        FUNCTION = "provide"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"key": ("STRING", {"default": ""})}}

        def provide(self, key):
            return (VALUES[key],)
    return Provide


class Keep:
    RETURN_TYPES = ()
    FUNCTION = "keep"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",), "slot": ("STRING", {"default": ""})}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True  # accepts any socket type

    def keep(self, value, slot):
        KEPT[slot] = value
        return {}


def register(extension_nodes: dict) -> None:
    """Our nodes and the test sources/sink in the host's node table (as the host's loader would put them)."""
    host_nodes.NODE_CLASS_MAPPINGS.update(extension_nodes)
    host_nodes.NODE_CLASS_MAPPINGS.update({f"Provide{t}": _provider(t) for t in TYPES})
    host_nodes.NODE_CLASS_MAPPINGS["Keep"] = Keep


def value(type_name: str, obj) -> dict:
    """A graph node giving ``obj`` on a ``type_name`` socket (a fresh key: the executor's cache never mixes runs)."""
    key = f"v{next(_ids)}"
    VALUES[key] = obj
    return {"class_type": f"Provide{type_name}", "inputs": {"key": key}}


class _Server:
    client_id = None
    last_node_id = None

    def send_sync(self, *args, **kwargs):
        pass

    def queue_updated(self):
        pass


@dataclass
class Result:
    valid: bool
    validation: list = field(default_factory=list)  # the host's error dicts of every invalid node
    error: str | None = None  # the exception message of a failed execution
    error_type: str | None = None
    outputs: dict = field(default_factory=dict)  # slot -> value given to Keep

    @property
    def message(self) -> str:
        if self.error is not None:
            return self.error
        # The host files a node's validate_inputs answer under each input that function takes: one copy each.
        answers = {str(e.get("details", "")).partition(" - ")[2] or str(e.get("details", "")): e for e in
                   self.validation}
        return " | ".join(f"{e.get('message')}: {e.get('details')}" for e in answers.values())


EXECUTOR = None


def new_executor():
    """The host's executor with the classic cache, built as its ``main.py`` builds one: hosts whose executor takes
    ``cache_args`` (it reads the RAM-cache headroom from them on every prompt) get the values main.py gives a
    classic cache (no LRU size, no RAM headroom)."""
    import inspect
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(_Server(), cache_type=False,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    return execution.PromptExecutor(_Server(), cache_type=False)


def run(graph: dict) -> Result:
    """Validate and (when valid) execute ``graph`` = {node id: {"class_type", "inputs"}} with one executor per
    process, so that a failure is followed by the next graph in the same host state (as in a running server)."""
    global EXECUTOR
    graph = copy.deepcopy(graph)  # a fresh prompt, as each queued one is (the executor writes into it)
    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, graph, None))
    if not valid:
        reasons = [e for info in node_errors.values() for e in info["errors"]] or [error]
        return Result(False, validation=reasons)
    EXECUTOR = EXECUTOR or new_executor()
    KEPT.clear()
    EXECUTOR.execute(graph, prompt_id, {}, list(outputs))
    if not EXECUTOR.success:
        data = next(d for event, d in EXECUTOR.status_messages if event == "execution_error")
        return Result(True, error=data["exception_message"], error_type=data["exception_type"])
    return Result(True, outputs=dict(KEPT))
