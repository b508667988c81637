"""ComfyUI nodes: declarations only; the glue is in host.py, the math in ipadapter_core."""
from . import host
from .apply_ipadapter import ApplyIPAdapter
from .encode_image_prompt import EncodeImagePrompt
from .load_ipadapter import LoadIPAdapter

host.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt",
    "ApplyIPAdapter": "Apply IP-Adapter",
}
