"""Load IP-Adapter: a weight file from models/ipadapter -> IPADAPTER."""
from ..host import files
from .sockets import CATEGORY, IPAdapter, io, verdict


class LoadIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadIPAdapter", display_name="Load IP-Adapter", category=CATEGORY,
            description="Loads an IP-Adapter weight file (official h94/IP-Adapter or trained with this extension). "
                        "The variant and the model family are read from the file's contents.",
            inputs=[io.Combo.Input("ipadapter_name", options=files.adapter_names(), tooltip=(
                "A .safetensors or .bin file in models/ipadapter (or a path from extra_model_paths.yaml under "
                "'ipadapter')."))],
            outputs=[IPAdapter.Output(display_name="ipadapter", tooltip=(
                "The adapter: its image projection and per-layer key/value weights."))])

    @classmethod
    def validate_inputs(cls, ipadapter_name=None):
        return verdict(*([] if ipadapter_name is None else [lambda: files.check_adapter_name(ipadapter_name)]))

    @classmethod
    def fingerprint_inputs(cls, ipadapter_name):
        """A file written again under the same name (a new training export) is read again."""
        return files.adapter_fingerprint(ipadapter_name)

    @classmethod
    def execute(cls, ipadapter_name):
        return io.NodeOutput(files.load_named_adapter(ipadapter_name))
