"""Load IP-Adapter (by contents): MODEL + preset -> MODEL, IPADAPTER, CLIP_VISION, the files found by what they
contain."""
from ..host import by_contents, files
from ..ipadapter_core import choice
from ..ipadapter_core.scan import AUTO, PRESETS
from .sockets import CATEGORY, IPAdapter, io, verdict


class LoadIPAdapterByPreset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadIPAdapterByPreset", display_name="Load IP-Adapter (by contents)", category=CATEGORY,
            description="Finds the adapter for a preset and the model's family (SD1.5 or SDXL) in models/ipadapter "
                        "and its CLIP vision encoder in models/clip_vision by reading the files' keys and shapes, "
                        "never their names. When nothing fits, the message lists what each file is.",
            inputs=[
                io.Model.Input("model", tooltip="Its UNet says SD1.5 or SDXL; passed through unchanged."),
                io.Combo.Input("preset", options=list(PRESETS), default="standard", tooltip=(
                    "light / standard: base adapter (ViT-H); vit-G: base adapter (ViT-bigG); plus, plus face: "
                    "16-token adapter; full face: SD1.5 only; faceid ...: FaceID files.")),
                io.Combo.Input("ipadapter_name", options=[AUTO, *files.adapter_names()], default=AUTO,
                               optional=True, tooltip=(
                                   "auto: the one file whose contents fit. A file: used when several fit and their "
                                   "contents cannot tell them apart (light and standard, plus and plus face).")),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The input model, unchanged."),
                     IPAdapter.Output(display_name="ipadapter"),
                     io.ClipVision.Output(display_name="clip_vision", tooltip="For Encode Image Prompt.")])

    @classmethod
    def validate_inputs(cls, preset=None, ipadapter_name=None):
        checks = [] if preset is None else [lambda: choice("preset", preset, PRESETS)]
        if ipadapter_name not in (None, AUTO):
            checks.append(lambda: files.check_adapter_name(ipadapter_name))
        return verdict(*checks)

    @classmethod
    def fingerprint_inputs(cls, model, preset, ipadapter_name=AUTO):
        """A file added, removed or written again in either folder makes the node look again."""
        return by_contents.fingerprint()

    @classmethod
    def execute(cls, model, preset, ipadapter_name=AUTO):
        return io.NodeOutput(*by_contents.load_by_preset(model, preset, ipadapter_name))
