"""Apply IP-Adapter, Apply IP-Adapter (Advanced) and Apply IP-Adapter (Style & Composition): MODEL + IPADAPTER +
IMAGE_PROMPT -> patched MODEL."""
from ..host import patching
from ..ipadapter_core import CURVES, EMBEDS_SCALINGS, LAYER_PRESETS, check_custom_weights, choice, finite_number
from .sockets import CATEGORY, FRACTION_RANGE, WEIGHT_RANGE, FrameWeights, ImagePrompt, IPAdapter, io, verdict

PATCHED = "A patched copy of the model; the input model is left unchanged."


def _common_inputs():
    low, high = WEIGHT_RANGE
    return [
        io.Model.Input("model"),
        IPAdapter.Input("ipadapter"),
        ImagePrompt.Input("image_prompt"),
        io.Float.Input("weight", default=1.0, min=low, max=high, step=0.05,
                       tooltip="λ, the strength of the image prompt; 0 gives back the model."),
        io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling schedule where the image prompt starts."),
        io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling schedule where it stops."),
    ]


MASK = io.Mask.Input("attn_mask", optional=True, tooltip="The image prompt acts only inside the mask (resized to "
                     "each layer's latent grid). Two masked adapters give regional image prompts. A batch of masks: "
                     "one per frame.")


SCALING_TIP = ("Where the weight acts: on the image branch's output (V only), on its keys and values (K+V), the "
               "same scaled by the layer width / 1280 (C penalty), or on the keys and the mean of the values.")


def embeds_scaling_input(optional=True):
    return io.Combo.Input("embeds_scaling", options=list(EMBEDS_SCALINGS), default="V only", optional=optional,
                          tooltip=SCALING_TIP)


FRAME_WEIGHTS = FrameWeights.Input("frame_weights", optional=True, tooltip=(
    "A multiplier of weight per frame (IP-Adapter Frame Weights or Crossfade Batches), by absolute frame also "
    "in context windows; fewer entries than frames: the last repeats."))


def _faceid_inputs():
    """Appended last to both Apply nodes (optional: older graphs keep their behaviour)."""
    low, high = WEIGHT_RANGE
    return [
        io.Float.Input("lora_strength", default=1.0, min=low, max=high, step=0.05, optional=True, tooltip=(
            "FaceID files: the strength of the LoRA inside the file (on every attention layer); 0 leaves the "
            "model's weights as they are. Ignored for files without one.")),
        io.Float.Input("shortcut_weight", default=1.0, min=low, max=high, step=0.05, optional=True, tooltip=(
            "FaceID Plus v2 only: the weight of the face-crop branch added to the face tokens (the reference's "
            "s_scale).")),
    ]


def _check_strength(weight=None, start_at=None, end_at=None, composition_weight=None, lora_strength=None,
                    shortcut_weight=None):
    """The numbers' checks (a linked input is None here and checked at apply time)."""
    numbers = (("weight", weight, WEIGHT_RANGE), ("start_at", start_at, FRACTION_RANGE),
               ("end_at", end_at, FRACTION_RANGE), ("composition_weight", composition_weight, WEIGHT_RANGE),
               ("lora_strength", lora_strength, WEIGHT_RANGE), ("shortcut_weight", shortcut_weight, WEIGHT_RANGE))
    return [lambda n=n, v=v, r=r: finite_number(n, v, *r) for n, v, r in numbers if v is not None]


class ApplyIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplyIPAdapter", display_name="Apply IP-Adapter", category=CATEGORY,
            description="Adds the image prompt to every cross-attention layer through the adapter's decoupled "
                        "branch: out = Attn(Q, K, V) + weight * Attn(Q, K', V'). Chain several to stack adapters.",
            inputs=[*_common_inputs(), MASK, *_faceid_inputs()], outputs=[io.Model.Output(tooltip=PATCHED)])

    @classmethod
    def validate_inputs(cls, weight=None, start_at=None, end_at=None, lora_strength=None, shortcut_weight=None):
        return verdict(*_check_strength(weight, start_at, end_at, lora_strength=lora_strength,
                                        shortcut_weight=shortcut_weight))

    @classmethod
    def execute(cls, model, ipadapter, image_prompt, weight, start_at, end_at, attn_mask=None, lora_strength=1.0,
                shortcut_weight=1.0):
        options = patching.ApplyOptions(attn_mask=attn_mask, lora_strength=lora_strength,
                                        shortcut_weight=shortcut_weight)
        return io.NodeOutput(patching.apply_ip_adapter(model, ipadapter, image_prompt, weight, start_at, end_at,
                                                       options))


class ApplyIPAdapterAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        low, high = WEIGHT_RANGE
        return io.Schema(
            node_id="ApplyIPAdapterAdvanced", display_name="Apply IP-Adapter (Advanced)", category=CATEGORY,
            description="Apply IP-Adapter with per-layer weights (presets such as style transfer and composition, "
                        "or a custom list), a weight curve over the sampling range, batch unfold, an attention mask "
                        "and per-frame weights for animations.",
            inputs=[
                *_common_inputs(),
                io.Combo.Input("layer_weights", options=list(LAYER_PRESETS), default="linear", tooltip=(
                    "Which layers the image prompt acts on and how strongly: the same weight everywhere, curves "
                    "over depth, InstantStyle's style / composition blocks, custom, or the weight types of "
                    "ComfyUI_IPAdapter_plus (by block; the precise ones also steer the uncond pass).")),
                io.Float.Input("composition_weight", default=1.0, min=low, max=high, step=0.05,
                               tooltip="Weight of the composition layers in 'style and composition'."),
                io.String.Input("custom_layer_weights", default="", multiline=True, tooltip=(
                    "For 'custom': one multiplier per layer in file order (16 for SD1.5, 70 for SDXL), or "
                    "entries like 'output 1=1.0, input 8=0.5, 31=0.2'; layers not named get 0.")),
                io.Combo.Input("weight_curve", options=list(CURVES), default="constant",
                               tooltip="How the weight changes between start_at and end_at."),
                io.Boolean.Input("unfold_batch", default=False, tooltip=(
                    "Image i of the prompt conditions frame i (by absolute frame, also in AnimateDiff's context "
                    "windows; fewer images than frames: the last repeats); off: every latent sees every image.")),
                MASK,
                FRAME_WEIGHTS,
                embeds_scaling_input(),
                *_faceid_inputs(),
            ],
            outputs=[io.Model.Output(tooltip=PATCHED)])

    @classmethod
    def validate_inputs(cls, weight=None, start_at=None, end_at=None, composition_weight=None, layer_weights=None,
                        custom_layer_weights=None, weight_curve=None, embeds_scaling=None, lora_strength=None,
                        shortcut_weight=None):
        checks = _check_strength(weight, start_at, end_at, composition_weight, lora_strength, shortcut_weight)
        if embeds_scaling is not None:
            checks.append(lambda: choice("embeds_scaling", embeds_scaling, EMBEDS_SCALINGS))
        if layer_weights is not None:  # the host does not check V3 options itself
            checks.append(lambda: choice("layer_weights", layer_weights, LAYER_PRESETS))
        if weight_curve is not None:
            checks.append(lambda: choice("weight_curve", weight_curve, CURVES))
        if layer_weights == "custom" and custom_layer_weights is not None:
            checks.append(lambda: check_custom_weights(custom_layer_weights))
        return verdict(*checks)

    @classmethod
    def execute(cls, model, ipadapter, image_prompt, weight, start_at, end_at, layer_weights, composition_weight,
                custom_layer_weights, weight_curve, unfold_batch, attn_mask=None, frame_weights=None,
                embeds_scaling="V only", lora_strength=1.0, shortcut_weight=1.0):
        options = patching.ApplyOptions(layer_preset=layer_weights, composition_weight=composition_weight,
                                        custom_layer_weights=custom_layer_weights, weight_curve=weight_curve,
                                        attn_mask=attn_mask, unfold_batch=unfold_batch, frame_weights=frame_weights,
                                        embeds_scaling=embeds_scaling, lora_strength=lora_strength,
                                        shortcut_weight=shortcut_weight)
        return io.NodeOutput(patching.apply_ip_adapter(model, ipadapter, image_prompt, weight, start_at, end_at,
                                                       options))


class ApplyIPAdapterStyleComposition(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        low, high = WEIGHT_RANGE
        return io.Schema(
            node_id="ApplyIPAdapterStyleComposition", display_name="Apply IP-Adapter (Style & Composition)",
            category=CATEGORY,
            description="Style from one image prompt, composition from another, in one patch: the style prompt on "
                        "the style layers, the composition prompt on the composition layers (SDXL: InstantStyle's "
                        "blocks; SD1.5: the usual heuristic).",
            inputs=[
                io.Model.Input("model"),
                IPAdapter.Input("ipadapter"),
                ImagePrompt.Input("image_prompt_style"),
                ImagePrompt.Input("image_prompt_composition"),
                io.Float.Input("weight_style", default=1.0, min=low, max=high, step=0.05,
                               tooltip="Weight of the style prompt."),
                io.Float.Input("weight_composition", default=1.0, min=low, max=high, step=0.05,
                               tooltip="Weight of the composition prompt."),
                io.Boolean.Input("expand_style", default=False, tooltip=(
                    "The style prompt on every layer but the composition layers, instead of the style layers "
                    "only.")),
                *_common_inputs()[4:],
                embeds_scaling_input(optional=False),
                MASK,
            ],
            outputs=[io.Model.Output(tooltip=PATCHED)])

    @classmethod
    def validate_inputs(cls, weight_style=None, weight_composition=None, start_at=None, end_at=None,
                        embeds_scaling=None):
        checks = _check_strength(None, start_at, end_at)
        checks += [lambda n=n, v=v: finite_number(n, v, *WEIGHT_RANGE) for n, v in (
            ("weight_style", weight_style), ("weight_composition", weight_composition)) if v is not None]
        if embeds_scaling is not None:
            checks.append(lambda: choice("embeds_scaling", embeds_scaling, EMBEDS_SCALINGS))
        return verdict(*checks)

    @classmethod
    def execute(cls, model, ipadapter, image_prompt_style, image_prompt_composition, weight_style,
                weight_composition, expand_style, start_at, end_at, embeds_scaling="V only", attn_mask=None):
        options = patching.ApplyOptions(attn_mask=attn_mask, embeds_scaling=embeds_scaling)
        return io.NodeOutput(patching.apply_style_composition(
            model, ipadapter, image_prompt_style, image_prompt_composition, weight_style, weight_composition,
            expand_style, start_at, end_at, options))
