"""Pure-torch IP-Adapter core: weight formats, projection models, the decoupled attention.

Never imports the host (ComfyUI) or training libraries: the glue in ``host/`` passes host kernels in.
"""
from .adapter import IPAdapterModel, IPLayer, build_projection
from .attention import (EMBEDS_SCALINGS, Branch, IPAttentionPatch, branches_from_tokens, build_branches,
                        scale_keys_values, sdpa_attention)
from .checks import (check_filename_prefix, check_images, check_mask, choice, finite_number, finite_tensors,
                     number_list, whole_number)
from .face_prompt import FacePrompt
from .faceid_format import FACEID_VARIANTS
from .errors import (AdapterFileError, EncoderMismatchError, InputError, IPAdapterError, ModelMismatchError,
                     UnsupportedAdapterError)
from .image_ops import FIT_MODES, NOISE_KINDS, noise_image, square_images
from .image_prompt import COMBINE_METHODS, ImagePrompt, combine_prompts, with_default_uncond
from .layers import FAMILY_CONTEXT_DIM, FAMILY_NAMES, LAYOUTS, LayerSite, family_for_layers
from .presets import (CURVES, INCUMBENT_WEIGHT_TYPES, LAYER_PRESETS, check_custom_weights, curve_values,
                      layer_weights, swapped_layers)
from .siglip_head import NO_POOLING_HEAD, SiglipPoolingHead, build_pooling_head
from .schedules import CROSSFADE_METHODS, TIMINGS, FrameWeights, check_frame_weights, crossfade, frame_curve
from .spec import AdapterSpec, detect_spec
from .weights import (atomic_write, load_adapter_file, load_image_prompt, read_adapter_file, save_adapter_file,
                      save_image_prompt)

__all__ = [
    "AdapterFileError", "AdapterSpec", "FACEID_VARIANTS", "FacePrompt", "atomic_write", "Branch",
    "branches_from_tokens", "build_branches",
    "build_projection", "check_custom_weights", "check_filename_prefix", "check_frame_weights", "check_images",
    "check_mask", "choice", "COMBINE_METHODS", "combine_prompts", "crossfade", "CROSSFADE_METHODS", "curve_values",
    "CURVES", "detect_spec", "EncoderMismatchError", "FAMILY_CONTEXT_DIM", "family_for_layers", "FAMILY_NAMES",
    "finite_number", "finite_tensors", "FIT_MODES", "frame_curve", "FrameWeights", "ImagePrompt", "InputError",
    "IPAdapterError", "IPAdapterModel", "IPAttentionPatch", "IPLayer", "LAYER_PRESETS", "layer_weights",
    "LayerSite", "LAYOUTS", "load_adapter_file", "load_image_prompt", "ModelMismatchError", "noise_image",
    "NOISE_KINDS", "number_list", "read_adapter_file", "save_adapter_file", "save_image_prompt", "sdpa_attention",
    "square_images", "TIMINGS", "UnsupportedAdapterError", "whole_number", "with_default_uncond",
    # the controls of ComfyUI_IPAdapter_plus
    "EMBEDS_SCALINGS", "INCUMBENT_WEIGHT_TYPES", "scale_keys_values", "swapped_layers",
    # SigLIP's pooled embedding (docs/inference.md#siglip-pooled-embedding)
    "NO_POOLING_HEAD", "SiglipPoolingHead", "build_pooling_head",
]
