"""ApplyIPAdapter and ApplyIPAdapterAdvanced: MODEL + IPADAPTER + IMAGE_PROMPT -> patched MODEL."""
from ..ipadapter_core import CURVES, LAYER_PRESETS
from . import host

_STRENGTH = {
    "weight": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 5.0, "step": 0.05,
                         "tooltip": "λ, the strength of the image prompt; 0 gives back the model."}),
    "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                           "tooltip": "Fraction of the sampling schedule where the image prompt starts."}),
    "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                         "tooltip": "Fraction of the sampling schedule where it stops."}),
}
_MASK = {"attn_mask": ("MASK", {"tooltip": "The image prompt acts only inside the mask (resized to each layer's "
                                           "latent grid). Two masked adapters give regional image prompts."})}


class ApplyIPAdapter:
    DESCRIPTION = ("Adds the image prompt to every cross-attention layer through the adapter's decoupled "
                   "branch: out = Attn(Q, K, V) + weight * Attn(Q, K', V'). Chain several to stack adapters.")
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A patched copy of the model; the input model is left unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "ipadapter": ("IPADAPTER",), "image_prompt": ("IMAGE_PROMPT",),
                             **_STRENGTH},
                "optional": _MASK}

    def apply(self, model, ipadapter, image_prompt, weight, start_at, end_at, attn_mask=None):
        options = host.ApplyOptions(attn_mask=attn_mask)
        return (host.apply_ip_adapter(model, ipadapter, image_prompt, weight, start_at, end_at, options),)


class ApplyIPAdapterAdvanced:
    DESCRIPTION = ("Apply IP-Adapter with per-layer weights (presets such as style transfer and composition, or "
                   "a custom list), a weight curve over the sampling range, batch unfold and an attention mask.")
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A patched copy of the model; the input model is left unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",), "ipadapter": ("IPADAPTER",), "image_prompt": ("IMAGE_PROMPT",), **_STRENGTH,
            "layer_weights": (list(LAYER_PRESETS), {
                "default": "linear", "tooltip": "Which layers the image prompt acts on and how strongly: the same "
                "weight everywhere, curves over depth, InstantStyle's style / composition blocks, or custom."}),
            "composition_weight": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 5.0, "step": 0.05,
                                             "tooltip": "Weight of the composition layers in "
                                                        "'style and composition'."}),
            "custom_layer_weights": ("STRING", {
                "default": "", "multiline": True, "tooltip": "For 'custom': one multiplier per layer in file "
                "order (16 for SD1.5, 70 for SDXL), or entries like 'output 1=1.0, input 8=0.5, 31=0.2'; "
                "layers not named get 0."}),
            "weight_curve": (list(CURVES), {"default": "constant", "tooltip": "How the weight changes between "
                                                                              "start_at and end_at."}),
            "unfold_batch": ("BOOLEAN", {"default": False, "tooltip": "Image i of the prompt conditions latent i "
                                         "(animation frames); off: every latent sees every image."}),
        }, "optional": _MASK}

    def apply(self, model, ipadapter, image_prompt, weight, start_at, end_at, layer_weights, composition_weight,
              custom_layer_weights, weight_curve, unfold_batch, attn_mask=None):
        options = host.ApplyOptions(layer_preset=layer_weights, composition_weight=composition_weight,
                                    custom_layer_weights=custom_layer_weights, weight_curve=weight_curve,
                                    attn_mask=attn_mask, unfold_batch=unfold_batch)
        return (host.apply_ip_adapter(model, ipadapter, image_prompt, weight, start_at, end_at, options),)
