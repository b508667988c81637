"""Image Prompt Noise: a noise image to use as Encode Image Prompt's negative_image."""
from ..ipadapter_core import NOISE_KINDS, choice, finite_number, noise_image
from .sockets import CATEGORY, FRACTION_RANGE, io, verdict

SEED_MAX = 0xFFFFFFFFFFFFFFFF


class ImagePromptNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ImagePromptNoise", display_name="Image Prompt Noise", category=CATEGORY,
            description="Makes a negative image for Encode Image Prompt: the reference (or mean grey) degraded "
                        "towards noise. A noisy negative often gives cleaner, less over-saturated image prompts.",
            inputs=[
                io.Combo.Input("kind", options=list(NOISE_KINDS), default="fade", tooltip=(
                    "fade: blend towards noise; dissolve: replace a fraction of the pixels; gaussian: add "
                    "gaussian noise; shuffle: move pixels.")),
                io.Float.Input("strength", default=0.6, min=0.0, max=1.0, step=0.05),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX),
                io.Image.Input("image", optional=True, tooltip="The reference to degrade; without it, a 224×224 "
                               "grey image."),
            ],
            outputs=[io.Image.Output(tooltip="Connect to negative_image of Encode Image Prompt.")])

    @classmethod
    def validate_inputs(cls, kind=None, strength=None):
        checks = [] if kind is None else [lambda: choice("kind", kind, NOISE_KINDS)]
        if strength is not None:
            checks.append(lambda: finite_number("strength", strength, *FRACTION_RANGE))
        return verdict(*checks)

    @classmethod
    def execute(cls, kind, strength, seed, image=None):
        return io.NodeOutput(noise_image(kind, strength, seed, image))
