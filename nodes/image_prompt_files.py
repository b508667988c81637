"""SaveImagePrompt and LoadImagePrompt: an IMAGE_PROMPT as a safetensors file, to reuse an expensive encode."""
from . import host


class SaveImagePrompt:
    DESCRIPTION = ("Saves an image prompt (the encoded features, bit for bit) to "
                   "output/image_prompts/ so that Load Image Prompt can reuse it without the encoder.")
    CATEGORY = "ipadapter"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image_prompt": ("IMAGE_PROMPT",),
                             "filename_prefix": ("STRING", {"default": "image_prompt"})}}

    def save(self, image_prompt, filename_prefix):
        name = host.save_prompt(image_prompt, filename_prefix)
        return {"ui": {"text": [name]}}


class LoadImagePrompt:
    DESCRIPTION = "Loads an image prompt saved by Save Image Prompt (from output/ or input/ image_prompts/)."
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("IMAGE_PROMPT",)
    RETURN_NAMES = ("image_prompt",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"prompt_file": (host.saved_image_prompts(), {
            "tooltip": "A file from output/image_prompts/ ('[output]') or input/image_prompts/."})}}

    def load(self, prompt_file):
        return (host.load_prompt(prompt_file),)
