"""Load IP-Adapter: a weight file from models/ipadapter -> IPADAPTER."""
from ..host import files
from ..ipadapter_core import FACEID_VARIANTS, choice
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
                "'ipadapter').")),
                io.Combo.Input("faceid_variant", options=list(FACEID_VARIANTS), default="auto", optional=True,
                               tooltip=(
                    "FaceID files only, what their contents cannot tell: Plus and Plus v2 files are the same "
                    "(auto = Plus, the reference's default; pick 'plus v2' for ip-adapter-faceid-plusv2), Portrait "
                    "on the normalised or raw ('portrait unnorm') face embedding. Other files: auto."))],
            outputs=[IPAdapter.Output(display_name="ipadapter", tooltip=(
                "The adapter: its image projection and per-layer key/value weights."))])

    @classmethod
    def validate_inputs(cls, ipadapter_name=None, faceid_variant=None):
        checks = [] if ipadapter_name is None else [lambda: files.check_adapter_name(ipadapter_name)]
        if faceid_variant is not None:
            checks.append(lambda: choice("faceid_variant", faceid_variant, FACEID_VARIANTS))
        return verdict(*checks)

    @classmethod
    def fingerprint_inputs(cls, ipadapter_name, faceid_variant="auto"):
        """A file written again under the same name (a new training export) is read again."""
        return files.adapter_fingerprint(ipadapter_name), faceid_variant

    @classmethod
    def execute(cls, ipadapter_name, faceid_variant="auto"):
        return io.NodeOutput(files.load_named_adapter(ipadapter_name, faceid_variant))
