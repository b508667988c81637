"""Shared test setup: where the ComfyUI host is, and how tests import it.

The host is looked for in ``$COMFYUI_PATH``, then ``$HOME/ComfyUI``, then ``../..`` when this repository sits in
``ComfyUI/custom_nodes/``. Tests that need it use the ``host`` fixture (or the ``needs_host`` mark); where no host
is found they are reported as skipped with that reason, never passed.
"""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # Appended, not prepended: the host's top-level `nodes` module must win. Only `launch` is imported from here;
    # the extension itself is the package `ipadapter_suite` (launch.py), as in the training commands.
    sys.path.append(str(REPO))

import launch  # noqa: E402  (standard library only)

EXT = launch.import_extension()  # needs no host; `import ipadapter_suite.<module>` works from here on
from ipadapter_suite.host.locate import HostNotFoundError  # noqa: E402


def find_comfyui():
    """Return the ComfyUI root folder, or None (the same search as the training entry points)."""
    try:
        return launch.find_comfyui()
    except HostNotFoundError:
        return None


HOST = find_comfyui()
NO_HOST_REASON = ("ComfyUI host not found (looked in $COMFYUI_PATH, $HOME/ComfyUI and ../.. from custom_nodes): "
                  "host tests skipped; see README.md, 'Tests'")
needs_host = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


def import_host():
    """Put the host first on sys.path and import its core modules (CPU, no argv parsing)."""
    if HOST is None:
        pytest.skip(NO_HOST_REASON)
    return launch.import_host(str(HOST), cpu=True)


@pytest.fixture(scope="session")
def host():
    return import_host()


def import_extension():
    """The extension package with its host-facing parts imported (nodes, glue): one copy per process, shared
    with the training entry points (launch.py)."""
    import importlib
    import_host()
    importlib.import_module(f"{EXT.__name__}.nodes")
    return EXT


@pytest.fixture(scope="session")
def ext(host):
    return import_extension()


@pytest.fixture(scope="session")
def model_files(host, tmp_path_factory):
    """Random-weight model files in the real layouts, written once per session and removed after it:
    ``sd15`` (a single-file SD1.5 checkpoint, 2.1 GB fp16) and ``vit_h`` (an OpenCLIP ViT-H/14 CLIP vision file)."""
    import shutil

    import host_models
    root = tmp_path_factory.mktemp("model_files")
    files = {"sd15": root / "sd15-random.safetensors", "vit_h": root / "vit-h-random.safetensors"}
    try:
        host_models.make_sd15_checkpoint(str(files["sd15"]), seed=0)
        host_models.make_clip_vision_vit_h(str(files["vit_h"]), seed=0)
        yield files
    finally:  # pytest keeps its last tmp folders: do not leave 3.4 GB behind
        shutil.rmtree(root, ignore_errors=True)


def pytest_report_header(config):
    """Which host the tests run against (path and version), printed at the top of every run."""
    if HOST is None:
        return f"ComfyUI host: none ({NO_HOST_REASON})"
    version = "unknown"
    try:
        text = (Path(HOST) / "comfyui_version.py").read_text()
        version = text.split('__version__ = "', 1)[1].split('"', 1)[0]
    except (OSError, IndexError):
        pass
    return f"ComfyUI host: {HOST} (version {version})"
