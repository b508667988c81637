"""LoadIPAdapter: a weight file from models/ipadapter -> IPADAPTER."""
import folder_paths

from . import host


class LoadIPAdapter:
    DESCRIPTION = ("Loads an IP-Adapter weight file (official h94/IP-Adapter or trained with this extension). "
                   "The variant and the model family are read from the file's contents.")
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("IPADAPTER",)
    RETURN_NAMES = ("ipadapter",)
    OUTPUT_TOOLTIPS = ("The adapter: its image projection and per-layer key/value weights.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ipadapter_name": (folder_paths.get_filename_list(host.FOLDER), {
                "tooltip": "A .safetensors or .bin file in models/ipadapter (or a path from "
                           "extra_model_paths.yaml under 'ipadapter')."}),
        }}

    def load(self, ipadapter_name):
        path = folder_paths.get_full_path_or_raise(host.FOLDER, ipadapter_name)
        return (host.load_adapter(path),)
