"""Finding and importing the ComfyUI host, and this extension's node glue, from a training process.

The host is looked for in ``--comfyui`` / ``$COMFYUI_PATH``, then ``$HOME/ComfyUI``, then ``../..`` when this
repository sits in ``ComfyUI/custom_nodes/``. The extension package is imported as the host imports a custom node
(relative imports and all), so validation runs the nodes' own code.
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "ipadapter_suite"


class HostNotFoundError(RuntimeError):
    pass


def find_comfyui(explicit: str | None = None) -> Path:
    candidates = [Path(p) for p in (explicit, os.environ.get("COMFYUI_PATH")) if p]
    candidates.append(Path.home() / "ComfyUI")
    if REPO.parent.name == "custom_nodes":
        candidates.append(REPO.parent.parent)
    for path in candidates:
        if (path / "comfy" / "model_patcher.py").is_file():
            return path.resolve()
    raise HostNotFoundError(f"ComfyUI not found (looked in {', '.join(map(str, candidates))}): pass --comfyui "
                            "PATH or set COMFYUI_PATH to the ComfyUI folder")


def import_host(explicit: str | None = None) -> Path:
    """Put the host first on sys.path and import its core modules without parsing our argv."""
    if "comfy.model_management" in sys.modules:
        return Path(sys.modules["comfy.model_management"].__file__).resolve().parents[1]
    host = find_comfyui(explicit)
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    import torch
    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    import comfy.model_management  # noqa: F401
    return host


def import_extension(explicit: str | None = None):
    """This repository as a package (``<package>.nodes.host`` ...), imported once; reuses an already imported
    copy (the test suite's) so there is one set of node classes per process."""
    import_host(explicit)
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == str(REPO / "__init__.py") and hasattr(module, "nodes"):
            return module
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    package = sys.modules[PACKAGE]
    importlib.import_module(f"{package.__name__}.nodes.host")
    return package
