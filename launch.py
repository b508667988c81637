"""The one way in for code that runs outside ComfyUI's own loader (the training commands, the tests, the
benchmarks): this repository imported as one package, once per process, the way the host imports a custom node.

    import launch
    launch.import_host()                 # ComfyUI first on sys.path, argv not parsed (host/locate.py)
    ext = launch.import_extension()      # the package: ext.ipadapter_core, ext.host, ext.nodes, ext.training
    from ipadapter_suite.host import patching   # ... or by name, once imported

Standard library only, and never imported by the package itself, so every module of the extension exists once
per process (one set of classes for ``isinstance`` and ``except``).
"""
import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
PACKAGE = "ipadapter_suite"


def import_extension():
    """The package: the copy the host already loaded from custom_nodes if there is one, else ``ipadapter_suite``.
    Importing it needs no host: the nodes are imported when the host asks for them (``comfy_entrypoint``)."""
    init = str(REPO / "__init__.py")
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == init:
            return module
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module


def submodule(name: str):
    """``submodule("host.patching")`` -> the package's module of that name (imported on first use)."""
    return importlib.import_module(f"{import_extension().__name__}.{name}")


def find_comfyui(explicit: str | None = None) -> Path:
    return submodule("host.locate").find_comfyui(explicit)


def import_host(explicit: str | None = None, cpu: bool | None = None) -> Path:
    return submodule("host.locate").import_host(explicit, cpu)


def run_module(name: str) -> None:
    """``python -m training.train ...`` from the repository: ``main`` of the package's own copy of the module."""
    submodule(name).main(sys.argv[1:])
