"""Load IP-Adapter (by contents): the adapter and CLIP vision files a preset needs, found in ``models/ipadapter``
and ``models/clip_vision`` by their keys and shapes (ipadapter_core/scan.py), never by their names."""
import logging

import folder_paths

from ..ipadapter_core import scan
from . import files, loaders, unet

CLIP_VISION_FOLDER = "clip_vision"
log = logging.getLogger(__name__)

# One cache per folder kind for the life of the process (by path, size and modification time).
_SCAN_ADAPTERS = scan.FileScan(scan.classify_adapter)
_SCAN_ENCODERS = scan.FileScan(scan.classify_clip_vision)


def _listed(folder: str) -> list[tuple[str, str]]:
    """(name as the host lists it, full path) of every file of a model folder, sorted by name."""
    names = sorted(folder_paths.get_filename_list(folder))
    return [(name, path) for name in names if (path := folder_paths.get_full_path(folder, name)) is not None]


def scanned() -> tuple[list[scan.Found], list[scan.Found]]:
    """What each file of models/ipadapter and models/clip_vision is (cached until a file changes)."""
    return _SCAN_ADAPTERS(_listed(files.FOLDER)), _SCAN_ENCODERS(_listed(CLIP_VISION_FOLDER))


def find(model, preset: str, ipadapter_name: str = scan.AUTO) -> tuple[scan.Found, scan.Found | None]:
    """The files for ``preset`` and the model's UNet family, or an InputError saying what was found and what is
    missing."""
    adapters, encoders = scanned()
    return scan.choose(preset, unet.unet_family(model), adapters, encoders, ipadapter_name)


def load_by_preset(model, preset: str, ipadapter_name: str = scan.AUTO):
    """(model unchanged, the IPADAPTER value, the host's CLIP vision model or None)."""
    adapter_file, encoder_file = find(model, preset, ipadapter_name)
    log.info("preset '%s': %s (%s), %s", preset, adapter_file.name, adapter_file.kind,
             encoder_file.name if encoder_file else "no CLIP vision")
    clip_vision = None if encoder_file is None else loaders.load_clip_vision(encoder_file.path)
    need = scan.preset_need(preset, unet.unet_family(model))
    return model, files.load_adapter(adapter_file.path, need.load_as), clip_vision


def fingerprint() -> tuple:
    """Changes when a file of either folder is added, removed or written again: the node then runs again."""
    return tuple((folder, name, stamp) for folder in (files.FOLDER, CLIP_VISION_FOLDER)
                 for name, path in _listed(folder) if (stamp := scan.file_stamp(path)) is not None)
