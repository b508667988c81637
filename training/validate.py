"""Validation images for a fixed set of image prompts, made through the nodes' own code path
(``host/vision.encode_image_prompt`` + ``host/patching.apply_ip_adapter`` + the host's sampler + VAE decode), with CLIP-I (cosine
of the image encoder's embeddings of generated image and image prompt) logged to the trackers."""
import copy
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..host import loaders, patching
from ..host.files import LoadedAdapter
from ..host.vision import encode_image_prompt
from .data import load_image

log = logging.getLogger(__name__)


def _image_batch(path: str, size: int) -> torch.Tensor:
    return load_image(path, size).permute(1, 2, 0)[None]  # (1, R, R, 3): the host's IMAGE


@torch.no_grad()
def generate(frozen, adapter, image: torch.Tensor, *, size: int, steps: int, cfg: float, seed: int,
             weight: float = 1.0) -> torch.Tensor:
    """One image (1, R, R, 3) for an image prompt, with an empty text prompt (the paper's image-only setting)."""
    loaded = LoadedAdapter("training", adapter)
    prompt = encode_image_prompt(frozen.clip_vision, image)
    model = patching.apply_ip_adapter(frozen.patcher, loaded, prompt, weight, 0.0, 1.0)
    cond, pooled = frozen.clip.encode_from_tokens(frozen.clip.tokenize(""), return_pooled=True)
    positive = negative = [[cond, {"pooled_output": pooled}]]  # empty text on both sides: image-only
    latent = torch.zeros(1, 4, size // 8, size // 8)
    samples = loaders.sample(model, latent, seed, steps, cfg, positive, negative)
    return frozen.vae.decode(samples).clamp(0, 1)[..., :3].float().cpu()  # (1, R, R, 3)


@torch.no_grad()
def clip_i(clip_vision, generated: torch.Tensor, reference: torch.Tensor) -> float:
    a = clip_vision.encode_image(generated)["image_embeds"].float()
    b = clip_vision.encode_image(reference)["image_embeds"].float()
    return torch.nn.functional.cosine_similarity(a, b).mean().item()


def run_validation(accelerator, adapter, frozen, args, step: int) -> float | None:
    """Main process: images to <output>/validation/step-N and the trackers, mean CLIP-I logged."""
    if frozen.clip_vision is None or frozen.vae is None or not args.validation_images:
        log.info("validation skipped: needs --validation-images and the host's VAE, CLIP and CLIP vision")
        return None
    device = frozen.base_model.diffusion_model.parameters().__next__().device
    adapter = copy.deepcopy(adapter).float().eval().requires_grad_(False)
    folder = Path(args.output_dir) / "validation" / f"step-{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    scores, images = [], []
    for i, path in enumerate(args.validation_images):
        reference = _image_batch(path, args.resolution)
        image = generate(frozen, adapter, reference, size=args.resolution, steps=args.validation_sampling_steps,
                         cfg=args.validation_cfg, seed=args.seed + i)
        scores.append(clip_i(frozen.clip_vision, image, reference))
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:02d}.png")
        images.append(image[0])
    frozen.base_model.diffusion_model.to(device)  # the host may have offloaded it after sampling
    score = float(np.mean(scores))
    accelerator.log({"validation/clip_i": score}, step=step)
    _log_images(accelerator, torch.stack(images), step)
    log.info("validation at step %d: CLIP-I %.4f (%s)", step, score, folder)
    return score


def _log_images(accelerator, images: torch.Tensor, step: int) -> None:
    try:
        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
    except (ValueError, AttributeError):
        return
    if hasattr(tracker, "add_images"):
        tracker.add_images("validation", images, step, dataformats="NHWC")
