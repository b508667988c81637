"""ApplyIPAdapter: MODEL + IPADAPTER + IMAGE_PROMPT -> patched MODEL."""
from . import host


class ApplyIPAdapter:
    DESCRIPTION = ("Adds the image prompt to every cross-attention layer through the adapter's decoupled "
                   "branch: out = Attn(Q, K, V) + weight * Attn(Q, K', V'). Chain several to stack adapters.")
    CATEGORY = "ipadapter"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A patched copy of the model; the input model is left unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "ipadapter": ("IPADAPTER",),
            "image_prompt": ("IMAGE_PROMPT",),
            "weight": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 5.0, "step": 0.05,
                                 "tooltip": "λ, the strength of the image prompt; 0 gives back the model."}),
            "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                   "tooltip": "Fraction of the sampling schedule where the image prompt starts."}),
            "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                 "tooltip": "Fraction of the sampling schedule where it stops."}),
        }}

    def apply(self, model, ipadapter, image_prompt, weight, start_at, end_at):
        return (host.apply_ip_adapter(model, ipadapter, image_prompt, weight, start_at, end_at),)
