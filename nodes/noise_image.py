"""ImagePromptNoise: a noise image to use as EncodeImagePrompt's negative_image."""
from ..ipadapter_core import NOISE_KINDS, noise_image


class ImagePromptNoise:
    DESCRIPTION = ("Makes a negative image for Encode Image Prompt: the reference (or mean grey) degraded towards "
                   "noise. A noisy negative often gives cleaner, less over-saturated image prompts.")
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("Connect to negative_image of Encode Image Prompt.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kind": (list(NOISE_KINDS), {"default": "fade", "tooltip": "fade: blend towards noise; dissolve: "
                     "replace a fraction of the pixels; gaussian: add gaussian noise; shuffle: move pixels."}),
            "strength": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
        }, "optional": {"image": ("IMAGE", {"tooltip": "The reference to degrade; without it, a 224×224 grey "
                                                       "image."})}}

    def make(self, kind, strength, seed, image=None):
        return (noise_image(kind, strength, seed, image),)
