"""CombineImagePrompts: several IMAGE_PROMPTs -> one (concatenate, average or weighted average)."""
from ..ipadapter_core import COMBINE_METHODS, combine_prompts

_MORE = 4


class CombineImagePrompts:
    DESCRIPTION = ("Combines image prompts encoded with the same CLIP vision model: concat keeps every image (their "
                   "tokens side by side), average and weighted average make one image prompt of mean features.")
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("IMAGE_PROMPT",)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("The combined image prompt.",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image_prompt": ("IMAGE_PROMPT",),
            "method": (list(COMBINE_METHODS), {"default": "concat"}),
            "weights": ("STRING", {"default": "", "tooltip": "For weighted average: one weight per reference "
                                   "image, in order (images of image_prompt first), e.g. '1.0, 0.5'."}),
        }, "optional": {f"image_prompt_{i}": ("IMAGE_PROMPT",) for i in range(2, 2 + _MORE)}}

    def combine(self, image_prompt, method, weights, **more):
        prompts = [image_prompt] + [more[k] for k in sorted(more) if more[k] is not None]
        values = [w for w in weights.replace(";", ",").split(",") if w.strip()]
        return (combine_prompts(prompts, method, values),)
