"""Finding and importing the ComfyUI host from a process the host did not start (training, tests, benchmarks).

Looked for in ``--comfyui`` / ``$COMFYUI_PATH``, then ``$HOME/ComfyUI``, then ``../..`` when this repository sits
in ``ComfyUI/custom_nodes/``. Standard library only until the host is found.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def import_host(explicit: str | None = None, cpu: bool | None = None) -> Path:
    """Put the host first on sys.path and import its core modules without parsing our argv. ``cpu``: force the
    CPU (default: when CUDA is not available). A host already imported is kept."""
    if "comfy.model_management" in sys.modules:
        return Path(sys.modules["comfy.model_management"].__file__).resolve().parents[1]
    host = find_comfyui(explicit)
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    if cpu is None:
        import torch
        cpu = not torch.cuda.is_available()
    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401
    return host
