"""EncodeImagePrompt: CLIP vision + reference image(s) -> IMAGE_PROMPT."""
from ..ipadapter_core import FIT_MODES
from . import host


class EncodeImagePrompt:
    DESCRIPTION = ("Encodes reference images with a CLIP vision model into an image prompt that any IP-Adapter "
                   "trained on that encoder can use (base, plus, full-face). A batch of images is one prompt.")
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("IMAGE_PROMPT",)
    RETURN_NAMES = ("image_prompt",)
    OUTPUT_TOOLTIPS = ("Pooled embeddings and hidden states of the images and of their negative.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "The encoder the adapter was trained on: OpenCLIP "
                                                           "ViT-H/14 for most, ViT-bigG/14 for ip-adapter_sdxl "
                                                           "and ip-adapter_sd15_vit-G."}),
                "image": ("IMAGE", {"tooltip": "One or more reference images; several are used together."}),
            },
            "optional": {
                "negative_image": ("IMAGE", {"tooltip": "Replaces the default negative (zero embedding / "
                                                        "mean-grey image) of the CFG uncond pass."}),
                "fit": (list(FIT_MODES), {"default": "center crop", "tooltip": "How a non-square image becomes "
                                          "the encoder's square: crop (centre or an end of the long side), pad "
                                          "with the encoder's mean colour, or squash."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Images encoded at once; "
                                       "memory for activations stays flat however many frames are encoded."}),
            },
        }

    def encode(self, clip_vision, image, negative_image=None, fit="center crop", batch_size=8):
        return (host.encode_image_prompt(clip_vision, image, negative_image, fit, batch_size),)
