"""Files on the host's folders: ``models/ipadapter`` (adapters) and ``input|output/image_prompts`` (saved prompts)."""
import logging
import os
from dataclasses import dataclass

import comfy.ops
import folder_paths

from ..ipadapter_core import (AdapterFileError, ImagePrompt, InputError, IPAdapterModel, check_filename_prefix,
                              load_adapter_file, load_image_prompt, save_image_prompt)
from ..ipadapter_core.weights import is_dit_adapter_file, load_dit_adapter_file

FOLDER = "ipadapter"
EXTENSIONS = {".safetensors", ".bin", ".pt", ".pth"}
PROMPT_SUBFOLDER = "image_prompts"
log = logging.getLogger(__name__)


def register_model_folder() -> None:
    """``models/ipadapter``, keeping paths that ``extra_model_paths.yaml`` already added."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    folder_paths.folder_names_and_paths[FOLDER][1].update(EXTENSIONS)


def adapter_names() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


@dataclass(frozen=True)
class LoadedAdapter:
    """The IPADAPTER socket value."""
    name: str
    model: IPAdapterModel

    @property
    def spec(self):
        return self.model.spec


def load_adapter(path: str, faceid_variant: str = "auto") -> LoadedAdapter:
    """A weight file (a path, checked and strictly loaded) -> the IPADAPTER value; host ops for manual casting.
    ``faceid_variant`` decides what a FaceID file's contents cannot (docs/faceid.md#formats)."""
    if is_dit_adapter_file(path):  # Flux / SD3.5 IP-Adapters: their own layouts
        if faceid_variant != "auto":
            raise AdapterFileError(f"faceid_variant '{faceid_variant}' is for FaceID files; "
                                   f"{os.path.basename(path)} is not one: set faceid_variant to 'auto'")
        model = load_dit_adapter_file(path, operations=comfy.ops.manual_cast)
        log.info("IP-Adapter %s: %s", os.path.basename(path), model.spec.describe)
        return LoadedAdapter(os.path.basename(path), model)
    state_dict, spec = load_adapter_file(path, faceid_variant)
    model = IPAdapterModel.from_state_dict(state_dict, operations=comfy.ops.manual_cast,
                                           faceid_variant=faceid_variant)
    log.info("IP-Adapter %s: %s", os.path.basename(path), spec.describe)
    if spec.kind == "faceid_plus" and faceid_variant == "auto":
        log.info("%s: FaceID Plus and Plus v2 files have the same contents; run as Plus (the reference's "
                 "default). For ip-adapter-faceid-plusv2 files set Load IP-Adapter's faceid_variant to 'plus v2'",
                 os.path.basename(path))
    return LoadedAdapter(os.path.basename(path), model)


def check_adapter_name(name: str) -> None:
    names = adapter_names()
    if name not in names:
        found = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "none"
        raise InputError(f"ipadapter_name: '{name}' is not in models/ipadapter (found: {found}): put the file "
                         "there, or pick one of the list")


def load_named_adapter(name: str, faceid_variant: str = "auto") -> LoadedAdapter:
    """A file listed in ``models/ipadapter`` (the loader node's widget value)."""
    return load_adapter(folder_paths.get_full_path_or_raise(FOLDER, name), faceid_variant)


def saved_image_prompts() -> list[str]:
    """Saved prompts under input/image_prompts and output/image_prompts, as the host's annotated names."""
    found = []
    for kind, root in (("input", folder_paths.get_input_directory()), ("output", folder_paths.get_output_directory())):
        folder = os.path.join(root, PROMPT_SUBFOLDER)
        if not os.path.isdir(folder):
            continue
        names = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        suffix = "" if kind == "input" else " [output]"
        found += [f"{PROMPT_SUBFOLDER}/{name}{suffix}" for name in names]
    return found


def save_prompt(prompt: ImagePrompt, filename_prefix: str) -> str:
    """Write output/image_prompts/<prefix>_00001_.safetensors (numbered like the host's image saves)."""
    prefix = f"{PROMPT_SUBFOLDER}/{check_filename_prefix(filename_prefix)}"
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())
    os.makedirs(folder, exist_ok=True)
    file = f"{name}_{counter:05}_.safetensors"
    save_image_prompt(os.path.join(folder, file), prompt)
    return f"{subfolder}/{file} [output]" if subfolder else f"{file} [output]"


def _annotated_path(name: str) -> str:
    """The host's path for an annotated name (``x.safetensors [output]``). Hosts that refuse a path resolving
    outside its folder (a link out of input/, ``..``) raise a bare ValueError: ours names the file and the fix."""
    try:
        return folder_paths.get_annotated_filepath(name)
    except ValueError as exc:
        raise FileNotFoundError(f"saved image prompt '{name}' resolves outside ComfyUI's input/ and output/ folders "
                                f"(a link to another folder, or '..'), which ComfyUI refuses to read: copy the file "
                                f"into input/{PROMPT_SUBFOLDER}/") from exc


def prompt_path(name: str) -> str:
    """The file behind a saved prompt's annotated name, or an error saying where to put it."""
    path = _annotated_path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved image prompt '{name}': save one with Save Image Prompt, or put the file "
                                f"in input/{PROMPT_SUBFOLDER}/")
    return path


def check_prompt_name(name: str) -> None:
    if name not in saved_image_prompts():
        raise InputError(f"prompt_file: '{name}' is not a saved image prompt in input/ or output/"
                         f"{PROMPT_SUBFOLDER}/: save one with Save Image Prompt, or pick one of the list")


def _fingerprint(path) -> tuple[int, int] | None:
    """What changes when a file is written again under the same name (size, modification time); None when it is
    missing (the load then reports it)."""
    try:
        stat = os.stat(path)
    except (OSError, TypeError):
        return None
    return stat.st_size, stat.st_mtime_ns


def prompt_fingerprint(name: str):
    try:
        return _fingerprint(_annotated_path(name))
    except FileNotFoundError:  # the load reports it
        return None


def adapter_fingerprint(name: str):
    return _fingerprint(folder_paths.get_full_path(FOLDER, name))


def load_prompt(name: str) -> ImagePrompt:
    return load_image_prompt(prompt_path(name))
