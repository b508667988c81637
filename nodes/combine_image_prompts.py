"""Combine Image Prompts: several IMAGE_PROMPTs -> one (concatenate, average, weighted average, or the incumbent's
add, subtract, norm average, max, min)."""
from ..ipadapter_core import COMBINE_METHODS, choice, combine_prompts, number_list
from .sockets import CATEGORY, ImagePrompt, io, verdict

# Five fixed sockets, as saved graphs have them (image_prompt, image_prompt_2 ... image_prompt_5). The host's
# growing inputs (io.AutogrowDynamic) would rename them, and this host's front-end (1.27) does not draw them.
MORE = 4


class CombineImagePrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CombineImagePrompts", display_name="Combine Image Prompts", category=CATEGORY,
            description="Combines image prompts encoded with the same CLIP vision model (or face prompts, face "
                        "by face): concat keeps every image (their tokens side by side), average and weighted "
                        "average make one image prompt of mean features; add, subtract (the first minus the mean "
                        "of the others), norm average, max and min one image of those features.",
            inputs=[
                ImagePrompt.Input("image_prompt"),
                io.Combo.Input("method", options=list(COMBINE_METHODS), default="concat"),
                io.String.Input("weights", default="", tooltip="For weighted average: one weight per reference "
                                "image, in order (images of image_prompt first), e.g. '1.0, 0.5'."),
                *(ImagePrompt.Input(f"image_prompt_{i}", optional=True) for i in range(2, 2 + MORE)),
            ],
            outputs=[ImagePrompt.Output(display_name="image_prompt", tooltip="The combined image prompt.")])

    @classmethod
    def validate_inputs(cls, method=None, weights=None):
        checks = [] if method is None else [lambda: choice("method", method, COMBINE_METHODS)]
        if weights is not None and method == "weighted average":
            checks.append(lambda: number_list("weights", weights))
        return verdict(*checks)

    @classmethod
    def execute(cls, image_prompt, method, weights, **more):
        prompts = [image_prompt] + [more[k] for k in sorted(more) if more[k] is not None]
        return io.NodeOutput(combine_prompts(prompts, method, weights))
