"""What each node of cubiq/ComfyUI_IPAdapter_plus (the incumbent, 37 node ids) becomes in this extension, as data:
the converter (tools/convert_workflow.py) reads only this module. Node ids, input names and option strings of the
targets are this extension's public names (nodes/).

The incumbent's apply nodes take ``image`` and ``clip_vision`` and encode inside; here encoding is its own node,
so a converted apply node becomes Encode Image Prompt (or its tiled / face variant) → Apply.
"""
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------- our nodes

@dataclass(frozen=True)
class In:
    name: str
    type: str
    default: object = None
    widget: bool = False
    optional: bool = False
    control: bool = False  # the front-end adds a control_after_generate value after it


def _w(name, type_, default, **kw):
    return In(name, type_, default, widget=True, **kw)


@dataclass(frozen=True)
class Target:
    inputs: tuple[In, ...]
    outputs: tuple[tuple[str, str], ...]


_APPLY = (In("model", "MODEL"), In("ipadapter", "IPADAPTER"), In("image_prompt", "IMAGE_PROMPT"),
          _w("weight", "FLOAT", 1.0), _w("start_at", "FLOAT", 0.0), _w("end_at", "FLOAT", 1.0))
_SCALING = _w("embeds_scaling", "COMBO", "V only", optional=True)
TARGETS: dict[str, Target] = {
    "LoadIPAdapter": Target((_w("ipadapter_name", "COMBO", None), _w("faceid_variant", "COMBO", "auto", optional=True)),
                            (("ipadapter", "IPADAPTER"),)),
    "LoadIPAdapterByPreset": Target(
        (In("model", "MODEL"), _w("preset", "COMBO", "standard"), _w("ipadapter_name", "COMBO", "auto", optional=True)),
        (("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("clip_vision", "CLIP_VISION"))),
    "EncodeImagePrompt": Target(
        (In("clip_vision", "CLIP_VISION"), In("image", "IMAGE"), In("negative_image", "IMAGE", optional=True),
         _w("fit", "COMBO", "center crop", optional=True), _w("batch_size", "INT", 8, optional=True),
         _w("interpolation", "COMBO", "bicubic", optional=True),
         _w("sharpening", "FLOAT", 0.0, optional=True)),
        (("image_prompt", "IMAGE_PROMPT"),)),
    "ApplyIPAdapter": Target(_APPLY + (In("attn_mask", "MASK", optional=True),
                                       _w("lora_strength", "FLOAT", 1.0, optional=True),
                                       _w("shortcut_weight", "FLOAT", 1.0, optional=True)), (("MODEL", "MODEL"),)),
    "ApplyIPAdapterAdvanced": Target(
        _APPLY + (_w("layer_weights", "COMBO", "linear"), _w("composition_weight", "FLOAT", 1.0),
                  _w("custom_layer_weights", "STRING", ""), _w("weight_curve", "COMBO", "constant"),
                  _w("unfold_batch", "BOOLEAN", False), In("attn_mask", "MASK", optional=True),
                  In("frame_weights", "IPADAPTER_FRAME_WEIGHTS", optional=True), _SCALING,
                  _w("lora_strength", "FLOAT", 1.0, optional=True),
                  _w("shortcut_weight", "FLOAT", 1.0, optional=True)),
        (("MODEL", "MODEL"),)),
    "CombineImagePrompts": Target(
        (In("image_prompt", "IMAGE_PROMPT"), _w("method", "COMBO", "concat"), _w("weights", "STRING", ""),
         *(In(f"image_prompt_{i}", "IMAGE_PROMPT", optional=True) for i in range(2, 6))),
        (("image_prompt", "IMAGE_PROMPT"),)),
    "ImagePromptNoise": Target(
        (_w("kind", "COMBO", "fade"), _w("strength", "FLOAT", 0.6), _w("seed", "INT", 0, control=True),
         In("image", "IMAGE", optional=True)), (("IMAGE", "IMAGE"),)),
    "SaveImagePrompt": Target((In("image_prompt", "IMAGE_PROMPT"), _w("filename_prefix", "STRING", "image_prompt")),
                              ()),
    "IPAdapterFrameWeights": Target(
        (_w("weights", "STRING", "1.0, 0.0"), _w("timing", "COMBO", "linear"), _w("frames", "INT", 16),
         _w("start_frame", "INT", 0), _w("end_frame", "INT", 9999)),
        (("weights", "IPADAPTER_FRAME_WEIGHTS"), ("weights_invert", "IPADAPTER_FRAME_WEIGHTS"), ("frames", "INT"))),
    # Agreed names of nodes other parts of the product add.
    "ApplyIPAdapterStyleComposition": Target(
        (In("model", "MODEL"), In("ipadapter", "IPADAPTER"), In("image_prompt_style", "IMAGE_PROMPT"),
         In("image_prompt_composition", "IMAGE_PROMPT"), _w("weight_style", "FLOAT", 1.0),
         _w("weight_composition", "FLOAT", 1.0), _w("expand_style", "BOOLEAN", False), _w("start_at", "FLOAT", 0.0),
         _w("end_at", "FLOAT", 1.0), _w("embeds_scaling", "COMBO", "V only"), In("attn_mask", "MASK", optional=True)),
        (("MODEL", "MODEL"),)),
    "EncodeImagePromptTiled": Target(
        (In("clip_vision", "CLIP_VISION"), In("image", "IMAGE"), In("negative_image", "IMAGE", optional=True),
         _w("tile_mode", "COMBO", "tiles"), _w("enhance_ratio", "FLOAT", 1.0), _w("enhance_tiles", "INT", 2),
         _w("sharpening", "FLOAT", 0.0), _w("batch_size", "INT", 8)),
        (("image_prompt", "IMAGE_PROMPT"), ("masks", "MASK"), ("tiles", "IMAGE"))),
    "LoadFaceAnalysis": Target(
        (_w("model_pack", "COMBO", "buffalo_l"), _w("backend", "COMBO", "onnxruntime"), _w("det_size", "INT", 640)),
        (("face_analysis", "FACE_ANALYSIS"),)),
    "EncodeFacePrompt": Target(
        (In("face_analysis", "FACE_ANALYSIS"), In("image", "IMAGE"), In("clip_vision", "CLIP_VISION", optional=True),
         _w("face", "COMBO", "largest", optional=True), _w("face_index", "INT", 0, optional=True),
         _w("max_faces", "INT", 1, optional=True)),
        (("image_prompt", "IMAGE_PROMPT"),)),
}

# ---------------------------------------------------------------------------------------------- option strings

# The incumbent's 15 weight types -> our layer_weights presets (by block; the names agreed for the presets of the
# incumbent's curves, whose namesakes here are depth curves of our own).
WEIGHT_TYPES = {
    "linear": "linear", "ease in": "ease in (incumbent)", "ease out": "ease out (incumbent)",
    "ease in-out": "ease in-out (incumbent)", "reverse in-out": "reverse in-out", "weak input": "weak input",
    "weak output": "weak output", "weak middle": "weak middle", "strong middle": "strong middle",
    "style transfer": "style transfer", "composition": "composition", "strong style transfer": "strong style transfer",
    "style and composition": "style and composition", "style transfer precise": "style transfer precise",
    "composition precise": "composition precise",
}
SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out (incumbent)",
                       "style transfer": "style transfer"}  # IPAdapter (its simple node) -> the presets above
UNIFIED_PRESETS = {
    "LIGHT - SD1.5 only (low strength)": "light", "STANDARD (medium strength)": "standard",
    "VIT-G (medium strength)": "vit-G", "PLUS (high strength)": "plus", "PLUS FACE (portraits)": "plus face",
    "FULL FACE - SD1.5 only (portraits stronger)": "full face",
    "FACEID": "faceid", "FACEID PLUS - SD1.5 only": "faceid plus", "FACEID PLUS V2": "faceid plus v2",
    "FACEID PORTRAIT (style transfer)": "faceid portrait", "FACEID PORTRAIT UNNORM - SDXL only (strong)": None,
    "Composition": "plus", "Kolors": None,
}
NO_PRESET = {"FACEID PORTRAIT UNNORM - SDXL only (strong)": "the unnormalised portrait adapter is not supported",
             "Kolors": "Kolors (ChatGLM text encoder) models are not supported: only SD1.5 and SDXL UNets"}
COMBINE = {"concat": "concat", "add": "add", "subtract": "subtract", "average": "average",
           "norm average": "norm average", "max": "max", "min": "min"}
SCALING = {v: v for v in ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")}
CROP = {"center": "center crop", "top": "top/left crop", "left": "top/left crop", "bottom": "bottom/right crop",
        "right": "bottom/right crop", "pad": "pad"}
INTERPOLATION = {"LANCZOS": "lanczos", "BICUBIC": "bicubic", "BILINEAR": "bilinear", "NEAREST": "nearest",
                 "HAMMING": None, "BOX": None}
TIMING = {"custom": "custom", "linear": "linear", "ease_in_out": "ease in-out", "ease_in": "ease in",
          "ease_out": "ease out", "random": None}
NOISE = {k: k for k in ("fade", "dissolve", "gaussian", "shuffle")}
INSIGHTFACE_PACKS = {"buffalo_l": "buffalo_l", "antelopev2": "antelopev2"}
# The incumbent numbers its per-block weights (IPAdapterMS layer_weights "i:w") in its patching order, one number
# per transformer block: SD1.5 input 1, 2, 4, 5, 7, 8, middle, output 3-11; SDXL input 4, 5, 7, 8, middle,
# output 0-5 (docs/layers.md#the-incumbents-block-numbers). Our custom_layer_weights names blocks directly.
INCUMBENT_BLOCKS = {
    "sd15": ["input 1", "input 2", "input 4", "input 5", "input 7", "input 8", "middle",
             *(f"output {i}" for i in range(3, 12))],
    "sdxl": ["input 4", "input 5", "input 7", "input 8", "middle", *(f"output {i}" for i in range(6))],
}

# ---------------------------------------------------------------------------------------------- the 37 nodes

@dataclass(frozen=True)
class Rule:
    """How one incumbent node converts. ``widgets``: its widget names in its order, with their defaults (what a
    missing trailing value means). ``to``: incumbent input (widget or socket) -> ("main"|"encode"|..., our input),
    with ``values`` the option table for it; ``fixed``: our inputs set to a value; ``outputs``: incumbent output
    slot -> (node, our slot); ``drop``: incumbent inputs with no equivalent -> why (reported when linked or not at
    their default)."""
    target: str | None
    why: str = ""  # not mapped: the reason
    encode: str = ""  # "image" | "tiles" | "enhancer" | "face" | "style_composition": the encode node to add
    widgets: tuple[tuple[str, object], ...] = ()
    to: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=lambda: {0: ("main", 0)})
    drop: dict = field(default_factory=dict)
    combine: str = ""  # the incumbent widget whose value, unless concat, adds a Combine Image Prompts
    essential: tuple = ()  # widgets whose value, when it has no equivalent, leaves the node as it is


_APPLY_TO = {"model": ("main", "model"), "ipadapter": ("main", "ipadapter"), "attn_mask": ("main", "attn_mask"),
             "weight": ("main", "weight"), "start_at": ("main", "start_at"), "end_at": ("main", "end_at"),
             "weight_type": ("main", "layer_weights"), "embeds_scaling": ("main", "embeds_scaling"),
             "image": ("encode", "image"), "image_negative": ("encode", "negative_image"),
             "clip_vision": ("encode", "clip_vision"), "encode_batch_size": ("encode", "batch_size")}
_APPLY_VALUES = {"weight_type": WEIGHT_TYPES, "embeds_scaling": SCALING}
_W, _WT, _CE, _SA, _EA, _ES = (("weight", 1.0), ("weight_type", "linear"), ("combine_embeds", "concat"),
                               ("start_at", 0.0), ("end_at", 1.0), ("embeds_scaling", "V only"))
_EBS = ("encode_batch_size", 0)
_BATCH = {"unfold_batch": True}
_FACE_TO = {**_APPLY_TO, "image": ("encode", "image"), "clip_vision": ("encode", "clip_vision"),
            "insightface": ("encode", "face_analysis"), "weight_faceidv2": ("main", "shortcut_weight")}
_FACE_DROP = {"image_negative": "a face prompt's negative is the zero embedding (the reference's); a negative "
                                "image has no meaning for it",
              1: "face_image (the face crops it used): not given; Encode Face Prompt crops the faces itself"}
_FACE_OUT = {0: ("main", 0)}
_TILED_TO = {"sharpening": ("encode", "sharpening")}


def _advanced(widgets, encode="image", fixed=None, **kw):
    return Rule("ApplyIPAdapterAdvanced", encode=encode, widgets=widgets, to=dict(_APPLY_TO, **kw.pop("to", {})),
                values=dict(_APPLY_VALUES, **kw.pop("values", {})), fixed=dict(fixed or {}), **kw)


_NO_PARAMS = ("the incumbent's IPADAPTER_PARAMS pipe (regional conditioning) has no equivalent: use IP-Adapter "
              "Regional Prompt, or masked Apply IP-Adapter nodes, one per region")
_NO_STRATEGY = "weights strategies (the incumbent's animation pipe) have no equivalent: use IP-Adapter Frame Weights"
_KOLORS = "Kolors (ChatGLM text encoder) models are not supported: only SD1.5 and SDXL UNets"

RULES: dict[str, Rule] = {
    # ---- apply nodes
    "IPAdapter": _advanced((_W, _SA, _EA, ("weight_type", "standard")), values={"weight_type": SIMPLE_WEIGHT_TYPES}),
    "IPAdapterAdvanced": _advanced((_W, _WT, _CE, _SA, _EA, _ES), combine="combine_embeds"),
    "IPAdapterBatch": _advanced((_W, _WT, _SA, _EA, _ES, _EBS), fixed=_BATCH),
    "IPAdapterFaceID": _advanced((_W, ("weight_faceidv2", 1.0), _WT, _CE, _SA, _EA, _ES), encode="face",
                                 to=_FACE_TO, drop=_FACE_DROP, outputs=_FACE_OUT, combine="combine_embeds"),
    "IPAAdapterFaceIDBatch": _advanced((_W, ("weight_faceidv2", 1.0), _WT, _CE, _SA, _EA, _ES), encode="face",
                                       to=_FACE_TO, drop=_FACE_DROP, outputs=_FACE_OUT, fixed=_BATCH),
    "IPAdapterFaceIDKolors": Rule(None, why=_KOLORS),
    "IPAdapterTiled": _advanced((_W, _WT, _CE, _SA, _EA, ("sharpening", 0.0), _ES), encode="tiles",
                                outputs={0: ("main", 0), 1: ("encode", 2), 2: ("encode", 1)},
                                to=_TILED_TO, combine="combine_embeds"),
    "IPAdapterTiledBatch": _advanced((_W, _WT, _SA, _EA, ("sharpening", 0.0), _ES, _EBS), encode="tiles",
                                     outputs={0: ("main", 0), 1: ("encode", 2), 2: ("encode", 1)},
                                     to=_TILED_TO, fixed=_BATCH),
    "IPAdapterEmbeds": _advanced((_W, _WT, _SA, _EA, _ES), encode="", to={"pos_embed": ("main", "image_prompt")},
                                 drop={"neg_embed": "the negative travels inside the image prompt: give "
                                                    "negative_image to Encode Image Prompt",
                                       "clip_vision": "not needed: the image prompt is already encoded"}),
    "IPAdapterEmbedsBatch": _advanced((_W, _WT, _SA, _EA, _ES), encode="", to={"pos_embed": ("main", "image_prompt")},
                                      fixed=_BATCH, drop={"neg_embed": "the negative travels inside the image "
                                                                       "prompt", "clip_vision": "not needed"}),
    "IPAdapterStyleComposition": Rule(
        "ApplyIPAdapterStyleComposition", encode="style_composition",
        widgets=(("weight_style", 1.0), ("weight_composition", 1.0), ("expand_style", False),
                 ("combine_embeds", "average"), _SA, _EA, _ES),
        to={k: ("main", k) for k in ("model", "ipadapter", "attn_mask", "weight_style", "weight_composition",
                                      "expand_style", "start_at", "end_at", "embeds_scaling")},
        values={"embeds_scaling": SCALING},
        drop={"combine_embeds": "several images per input are concatenated; add Combine Image Prompts after "
                                "each Encode Image Prompt to average them"}),
    "IPAdapterStyleCompositionBatch": Rule(
        "ApplyIPAdapterStyleComposition", encode="style_composition",
        widgets=(("weight_style", 1.0), ("weight_composition", 1.0), ("expand_style", False), _SA, _EA, _ES),
        to={k: ("main", k) for k in ("model", "ipadapter", "attn_mask", "weight_style", "weight_composition",
                                      "expand_style", "start_at", "end_at", "embeds_scaling")},
        values={"embeds_scaling": SCALING}),
    "IPAdapterMS": _advanced((_W, ("weight_faceidv2", 1.0), _WT, _CE, _SA, _EA, _ES, ("layer_weights", "")),
                             to={"weight_faceidv2": ("main", "shortcut_weight"),
                                 "layer_weights": ("main", "custom_layer_weights")},
                             drop={"insightface": "FaceID through the Mad Scientist node is not converted: use "
                                                  "Encode Face Prompt"}, combine="combine_embeds"),
    "IPAdapterClipVisionEnhancer": _advanced(
        (_W, _WT, _CE, _SA, _EA, _ES, ("enhance_tiles", 2), ("enhance_ratio", 1.0)), encode="enhancer",
        to={"enhance_ratio": ("encode", "enhance_ratio"), "enhance_tiles": ("encode", "enhance_tiles")},
        combine="combine_embeds"),
    "IPAdapterClipVisionEnhancerBatch": _advanced(
        (_W, _WT, _SA, _EA, _ES, ("enhance_tiles", 2), ("enhance_ratio", 0.5), _EBS), encode="enhancer",
        to={"enhance_ratio": ("encode", "enhance_ratio"), "enhance_tiles": ("encode", "enhance_tiles")},
        fixed=_BATCH),
    "IPAdapterFromParams": Rule(None, why=_NO_PARAMS),
    "IPAdapterPreciseStyleTransfer": _advanced((_W, ("style_boost", 1.0), _CE, _SA, _EA, _ES),
                                               to={"style_boost": ("main", "composition_weight")},
                                               fixed={"layer_weights": "style transfer precise"},
                                               combine="combine_embeds"),
    "IPAdapterPreciseStyleTransferBatch": _advanced((_W, ("style_boost", 1.0), _CE, _SA, _EA, _ES),
                                                    to={"style_boost": ("main", "composition_weight")},
                                                    fixed={"layer_weights": "style transfer precise", **_BATCH}),
    "IPAdapterPreciseComposition": _advanced((_W, ("composition_boost", 0.0), _CE, _SA, _EA, _ES),
                                             to={"composition_boost": ("main", "composition_weight")},
                                             fixed={"layer_weights": "composition precise"},
                                             combine="combine_embeds"),
    "IPAdapterPreciseCompositionBatch": _advanced((_W, ("composition_boost", 0.0), _CE, _SA, _EA, _ES),
                                                  to={"composition_boost": ("main", "composition_weight")},
                                                  fixed={"layer_weights": "composition precise", **_BATCH}),
    # ---- loaders
    "IPAdapterUnifiedLoader": Rule(
        "LoadIPAdapterByPreset", widgets=(("preset", "STANDARD (medium strength)"),),
        to={"model": ("main", "model"), "preset": ("main", "preset")}, values={"preset": UNIFIED_PRESETS},
        outputs={0: ("main", 0), 1: ("main", 1)}, essential=("preset",),
        drop={"ipadapter": "the incumbent's pipe only shared loaded files; the host caches them"}),
    "IPAdapterUnifiedLoaderFaceID": Rule(
        "LoadIPAdapterByPreset", widgets=(("preset", "FACEID"), ("lora_strength", 0.6), ("provider", "CPU")),
        to={"model": ("main", "model"), "preset": ("main", "preset")}, values={"preset": UNIFIED_PRESETS},
        outputs={0: ("main", 0), 1: ("main", 1)}, essential=("preset",),
        drop={"ipadapter": "the incumbent's pipe only shared loaded files; the host caches them",
              "provider": "Load Face Analysis runs on the host's device"}),
    "IPAdapterModelLoader": Rule("LoadIPAdapter", widgets=(("ipadapter_file", None),),
                                 to={"ipadapter_file": ("main", "ipadapter_name")}),
    "IPAdapterInsightFaceLoader": Rule(
        "LoadFaceAnalysis", widgets=(("provider", "CPU"), ("model_name", "buffalo_l")),
        to={"model_name": ("main", "model_pack")}, values={"model_name": INSIGHTFACE_PACKS},
        drop={"provider": "it runs on the host's device (backend onnxruntime)"}),
    "IPAdapterUnifiedLoaderCommunity": Rule(
        "LoadIPAdapterByPreset", widgets=(("preset", "Composition"),),
        to={"model": ("main", "model"), "preset": ("main", "preset")}, values={"preset": UNIFIED_PRESETS},
        outputs={0: ("main", 0), 1: ("main", 1)}, essential=("preset",),
        drop={"ipadapter": "the incumbent's pipe only shared loaded files; the host caches them"}),
    # ---- helpers
    "IPAdapterEncoder": Rule(
        "EncodeImagePrompt", widgets=(("weight", 1.0),),
        to={"image": ("main", "image"), "clip_vision": ("main", "clip_vision")},
        outputs={0: ("main", 0)},
        drop={"weight": "image prompts carry no scale: use Combine Image Prompts' weighted average, or the Apply "
                        "node's weight", "mask": "a mask over the reference image is not supported: crop the image",
              "ipadapter": "not needed: the image prompt fits every adapter of the encoder",
              "neg_embed": "the negative travels inside the image prompt"}),
    "IPAdapterCombineEmbeds": Rule(
        "CombineImagePrompts", widgets=(("method", "concat"),),
        to={"embed1": ("main", "image_prompt"), "method": ("main", "method"),
            **{f"embed{i}": ("main", f"image_prompt_{i}") for i in range(2, 6)}},
        values={"method": COMBINE}),
    "IPAdapterNoise": Rule(
        "ImagePromptNoise", widgets=(("type", "fade"), ("strength", 1.0), ("blur", 0)),
        to={"type": ("main", "kind"), "strength": ("main", "strength"), "image_optional": ("main", "image")},
        values={"type": NOISE}, drop={"blur": "no blur: add a blur node after Image Prompt Noise"}),
    "PrepImageForClipVision": Rule(
        "EncodeImagePrompt", widgets=(("interpolation", "LANCZOS"), ("crop_position", "center"), ("sharpening", 0.0)),
        why="folded into the Encode Image Prompt nodes it feeds (fit, interpolation, sharpening)"),
    "IPAdapterSaveEmbeds": Rule("SaveImagePrompt", widgets=(("filename_prefix", "IP_embeds"),),
                                to={"embeds": ("main", "image_prompt"), "filename_prefix": ("main", "filename_prefix")},
                                outputs={}),
    "IPAdapterLoadEmbeds": Rule(None, why="its .ipadpt files are pickled torch objects, which this extension never "
                                          "loads: encode the images again and use Save / Load Image Prompt"),
    "IPAdapterWeights": Rule(
        "IPAdapterFrameWeights",
        widgets=(("weights", "1.0, 0.0"), ("timing", "linear"), ("frames", 0), ("start_frame", 0),
                 ("end_frame", 9999), ("add_starting_frames", 0), ("add_ending_frames", 0), ("method", "full batch")),
        to={k: ("main", k) for k in ("weights", "timing", "frames", "start_frame", "end_frame")},
        values={"timing": TIMING}, outputs={0: ("main", 0), 1: ("main", 1), 2: ("main", 2)},
        drop={"add_starting_frames": "use IP-Adapter Crossfade Batches", "add_ending_frames": "use IP-Adapter "
              "Crossfade Batches", "method": "use IP-Adapter Crossfade Batches", "image": "use IP-Adapter Crossfade "
              "Batches", 3: "image_1: use IP-Adapter Crossfade Batches", 4: "image_2: use IP-Adapter Crossfade "
              "Batches", 5: _NO_STRATEGY}),
    "IPAdapterCombineWeights": Rule(None, why="adding two weight lists has no node here: write the summed list "
                                              "into IP-Adapter Frame Weights"),
    "IPAdapterWeightsFromStrategy": Rule(None, why=_NO_STRATEGY),
    "IPAdapterPromptScheduleFromWeightsStrategy": Rule(None, why=_NO_STRATEGY),
    "IPAdapterRegionalConditioning": Rule(None, why=_NO_PARAMS),
    "IPAdapterCombineParams": Rule(None, why=_NO_PARAMS),
}

# Front-end only node types: kept as they are, never reported.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
