"""The ComfyUI nodes, on the host's V3 schema: declarations and one call each; the glue is in ../host, the math in
../ipadapter_core. Node ids, input names, socket types and widget order are public (saved graphs use them)."""
from ..host import face_analysis, files
from .apply_ipadapter import ApplyIPAdapter, ApplyIPAdapterAdvanced, ApplyIPAdapterStyleComposition
from .combine_image_prompts import CombineImagePrompts
from .encode_image_prompt import EncodeImagePrompt, EncodeImagePromptTiled
from .face import EncodeFacePrompt, LoadFaceAnalysis
from .frame_weights import IPAdapterCrossfadeBatches, IPAdapterFrameWeights
from .image_prompt_files import LoadImagePrompt, SaveImagePrompt
from .load_by_contents import LoadIPAdapterByPreset
from .load_ipadapter import LoadIPAdapter
from .noise_image import ImagePromptNoise
from .regional_prompt import IPAdapterRegionalPrompt
from .sockets import ComfyExtension

files.register_model_folder()  # models/ipadapter, before any schema lists its files
face_analysis.register_model_folder()  # models/insightface

NODES = [LoadIPAdapter, EncodeImagePrompt, ApplyIPAdapter, ApplyIPAdapterAdvanced, CombineImagePrompts,
         ImagePromptNoise, SaveImagePrompt, LoadImagePrompt, IPAdapterFrameWeights, IPAdapterCrossfadeBatches,
         ApplyIPAdapterStyleComposition, EncodeImagePromptTiled, IPAdapterRegionalPrompt, LoadFaceAnalysis,
         EncodeFacePrompt, LoadIPAdapterByPreset]
NODE_CLASS_MAPPINGS = {node.GET_SCHEMA().node_id: node for node in NODES}  # for scripts and tests


class IPAdapterExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


def extension() -> IPAdapterExtension:
    return IPAdapterExtension()
