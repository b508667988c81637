"""The host's own loaders and sampler, for the trainer (its frozen models and validation images)."""
import torch

import comfy.clip_vision
import comfy.sample
import comfy.sd


def load_unet(path: str, dtype: torch.dtype | None):
    """The UNet of a single-file SD1.5/SDXL checkpoint (a ModelPatcher), stored in ``dtype``; nothing else."""
    options = {} if dtype is None else {"dtype": dtype}
    return comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False, model_options=options)[0]


def load_text_and_vae(path: str, dtype: torch.dtype | None):
    """The text encoder (CLIP) and VAE of the same checkpoint, without its UNet. ``dtype`` also stores the VAE when
    the host's VAE works in it (bf16; the host keeps it in fp32 on a CPU; never fp16, which overflows)."""
    options = {} if dtype is None else {"dtype": dtype}
    _, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_model=False, te_model_options=options)
    if dtype is not None and dtype != vae.vae_dtype and dtype in vae.working_dtypes:
        vae.first_stage_model.to(dtype)
        vae.vae_dtype = dtype  # the host casts the pixels to this attribute
    return clip, vae


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
