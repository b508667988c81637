"""ComfyUI nodes: declarations only; the glue is in host.py, the math in ipadapter_core."""
from . import host
from .apply_ipadapter import ApplyIPAdapter, ApplyIPAdapterAdvanced
from .combine_image_prompts import CombineImagePrompts
from .encode_image_prompt import EncodeImagePrompt
from .image_prompt_files import LoadImagePrompt, SaveImagePrompt
from .load_ipadapter import LoadIPAdapter
from .noise_image import ImagePromptNoise

host.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
    "ApplyIPAdapterAdvanced": ApplyIPAdapterAdvanced,
    "CombineImagePrompts": CombineImagePrompts,
    "ImagePromptNoise": ImagePromptNoise,
    "SaveImagePrompt": SaveImagePrompt,
    "LoadImagePrompt": LoadImagePrompt,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt",
    "ApplyIPAdapter": "Apply IP-Adapter",
    "ApplyIPAdapterAdvanced": "Apply IP-Adapter (Advanced)",
    "CombineImagePrompts": "Combine Image Prompts",
    "ImagePromptNoise": "Image Prompt Noise",
    "SaveImagePrompt": "Save Image Prompt",
    "LoadImagePrompt": "Load Image Prompt",
}
