"""IP-Adapter Regional Prompt: per region an image prompt and a text prompt under one mask, in one node."""
from ..host import regions
from ..ipadapter_core import EMBEDS_SCALINGS, choice, finite_number
from .apply_ipadapter import SCALING_TIP, _check_strength
from .sockets import CATEGORY, WEIGHT_RANGE, ImagePrompt, IPAdapter, io, verdict

REGIONS = 4


class IPAdapterRegionalPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        low, high = WEIGHT_RANGE
        per_region = []
        for i in range(1, REGIONS + 1):
            per_region += [
                ImagePrompt.Input(f"image_prompt_{i}", optional=True, tooltip=f"Region {i}'s image prompt."),
                io.Mask.Input(f"mask_{i}", optional=True, tooltip=f"Region {i}: where its image and text act."),
                io.Conditioning.Input(f"text_{i}", optional=True, tooltip=(
                    f"Region {i}'s text prompt (CLIP Text Encode), masked to mask_{i} and added to positive.")),
            ]
        return io.Schema(
            node_id="IPAdapterRegionalPrompt", display_name="IP-Adapter Regional Prompt", category=CATEGORY,
            description="Up to four regions, each an image prompt and a text prompt under one mask: the model gets "
                        "each image prompt inside its mask, positive gets each text masked to its region.",
            inputs=[
                io.Model.Input("model"),
                IPAdapter.Input("ipadapter"),
                io.Conditioning.Input("positive", tooltip="The prompt for the whole picture (kept as it is)."),
                io.Conditioning.Input("negative", tooltip="Passed through."),
                io.Float.Input("weight", default=1.0, min=low, max=high, step=0.05,
                               tooltip="λ of every region's image prompt."),
                io.Float.Input("prompt_weight", default=1.0, min=0.0, max=regions.PROMPT_WEIGHT_RANGE[1], step=0.05,
                               tooltip="Strength of the regions' text masks (the host's mask strength)."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001),
                io.Combo.Input("embeds_scaling", options=list(EMBEDS_SCALINGS), default="V only",
                               tooltip=SCALING_TIP),
                *per_region,
            ],
            outputs=[io.Model.Output(display_name="MODEL"), io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")])

    @classmethod
    def validate_inputs(cls, weight=None, start_at=None, end_at=None, prompt_weight=None, embeds_scaling=None):
        checks = _check_strength(weight, start_at, end_at)
        if prompt_weight is not None:
            checks.append(lambda: finite_number("prompt_weight", prompt_weight, *regions.PROMPT_WEIGHT_RANGE))
        if embeds_scaling is not None:
            checks.append(lambda: choice("embeds_scaling", embeds_scaling, EMBEDS_SCALINGS))
        return verdict(*checks)

    @classmethod
    def execute(cls, model, ipadapter, positive, negative, weight, prompt_weight, start_at, end_at, embeds_scaling,
                **per_region):
        parts = [regions.Region(i, per_region.get(f"mask_{i}"), per_region.get(f"image_prompt_{i}"),
                                per_region.get(f"text_{i}")) for i in range(1, REGIONS + 1)]
        return io.NodeOutput(*regions.regional_prompt(model, ipadapter, positive, negative, parts, weight,
                                                      prompt_weight, start_at, end_at, embeds_scaling))
