"""Pure-torch IP-Adapter core: weight formats, projection models, the decoupled attention.

Never imports the host (ComfyUI) or training libraries: the glue in ``nodes/`` passes host kernels in.
"""
from .adapter import IPAdapterModel, IPLayer, build_projection
from .attention import Branch, IPAttentionPatch, build_branches, branches_from_tokens, sdpa_attention
from .errors import (AdapterFileError, EncoderMismatchError, IPAdapterError, ModelMismatchError,
                     UnsupportedAdapterError)
from .image_prompt import ImagePrompt, with_default_uncond
from .layers import FAMILY_CONTEXT_DIM, FAMILY_NAMES, LAYOUTS, LayerSite, family_for_layers
from .spec import AdapterSpec, detect_spec
from .weights import load_adapter_file, read_adapter_file, save_adapter_file

__all__ = [
    "AdapterFileError", "AdapterSpec", "Branch", "EncoderMismatchError", "FAMILY_CONTEXT_DIM", "FAMILY_NAMES",
    "IPAdapterError", "IPAdapterModel", "IPAttentionPatch", "IPLayer", "ImagePrompt", "LAYOUTS", "LayerSite",
    "ModelMismatchError", "UnsupportedAdapterError", "branches_from_tokens", "build_branches", "build_projection", "detect_spec",
    "family_for_layers", "load_adapter_file", "read_adapter_file", "save_adapter_file", "sdpa_attention",
    "with_default_uncond",
]
