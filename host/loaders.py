"""The host's own loaders and sampler, for the trainer (its frozen models and validation images)."""
import torch

import comfy.clip_vision
import comfy.sample
import comfy.sd


def load_checkpoint(path: str, dtype: torch.dtype | None, encoders: bool = True,
                    unet_dtype: torch.dtype | None = None):
    """A single-file SD1.5/SDXL checkpoint -> (ModelPatcher, CLIP or None, VAE or None); stored in ``dtype``,
    the UNet in ``unet_dtype`` when given (None: the host's choice)."""
    options = {} if dtype is None else {"dtype": dtype}
    unet_options = options if unet_dtype is None else {"dtype": unet_dtype}
    patcher, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        path, output_vae=encoders, output_clip=encoders, model_options=unet_options, te_model_options=options)
    return patcher, clip, vae


def load_clip_vision(path: str):
    vision = comfy.clip_vision.load(path)
    if vision is None:
        raise ValueError(f"'{path}' is not a CLIP vision model the host can load")
    return vision


def sample(model, latent: torch.Tensor, seed: int, steps: int, cfg: float, positive, negative) -> torch.Tensor:
    """The host's sampler (euler, normal schedule), as KSampler runs it."""
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                               disable_pbar=True, seed=seed)
