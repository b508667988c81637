"""Tiny frozen models for the training tests: the host's own UNet class with the SD1.5 block layout at tiny
widths (as in parity_models), and small fixed random stand-ins for the VAE, the text encoder and the CLIP image
encoder. ``tiny_sd15`` is what ``--models-from training_models:tiny_sd15`` loads in a training subprocess."""
import hashlib
import math

import torch
import torch.nn.functional as F

CONTEXT = 32  # text / cross-attention width
EMBED, HIDDEN, PATCH = 24, 64, 8  # pooled width, hidden width, encoder patch size (on a 32 px input)
TEXT_TOKENS, VOCAB = 8, 64


def _host():
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.append(str(repo))
    import launch  # the repository is on sys.path where this module is (tests, benchmarks, --models-from)
    launch.import_host(cpu=True)


def tiny_unet(seed: int = 0):
    """A host ModelPatcher around a tiny SD1.5-layout BaseModel (EPS, the host's default discrete schedule)."""
    _host()
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    from parity_models import HEADS, _randomize, _unet_config
    config_cls = type("TinySD15", (comfy.supported_models.SD15,),
                      {"unet_extra_config": {"num_heads": HEADS, "num_head_channels": -1}})
    model = comfy.model_base.BaseModel(config_cls(_unet_config("sd15", CONTEXT)),
                                       model_type=comfy.model_base.ModelType.EPS, device=torch.device("cpu"))
    _randomize(model.diffusion_model, seed)
    model.diffusion_model.float().eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


class TinyEncoders:
    """Deterministic, seeded stand-ins. VAE: 8x average pool, then a fixed 1x1 conv to 4 channels (scaled).
    Text: words hashed into a fixed embedding table, T = 8 tokens. Image: 32 px, 8 px patches -> 16 patch tokens
    and a class token (B, 17, 64) as hidden states, and a pooled projection (B, 24); like CLIP it sees the pixels
    normalised, so the zero-normalised input is mean grey."""

    def __init__(self, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.vae = torch.randn(4, 3, generator=g)
        self.words = torch.randn(VOCAB, CONTEXT, generator=g) * 0.5
        self.positions = torch.randn(TEXT_TOKENS, CONTEXT, generator=g) * 0.1
        self.patch = torch.randn(HIDDEN, 3 * PATCH * PATCH, generator=g) / math.sqrt(3 * PATCH * PATCH)
        self.cls = torch.randn(HIDDEN, generator=g)
        self.proj = torch.randn(EMBED, HIDDEN, generator=g) / math.sqrt(HIDDEN)
        self.mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

    def encode_latents(self, pixels):
        x = F.avg_pool2d(pixels.float() * 2 - 1, 8)  # (B, 3, h, w)
        return torch.einsum("oc,bchw->bohw", self.vae, x)  # (B, 4, h, w)

    def encode_text(self, texts):
        rows = []
        for text in texts:
            ids = [int(hashlib.md5(w.encode()).hexdigest(), 16) % VOCAB for w in text.split()][:TEXT_TOKENS]
            ids += [0] * (TEXT_TOKENS - len(ids))
            rows.append(self.words[ids] + self.positions)  # (T, C)
        return torch.stack(rows), None

    def hidden_of_normalised(self, x):
        patches = F.unfold(x, PATCH, stride=PATCH).transpose(1, 2)  # (B, 16, 3*8*8)
        tokens = torch.tanh(patches @ self.patch.T)  # (B, 16, W)
        cls = tokens.mean(1, keepdim=True) + self.cls  # (B, 1, W)
        return torch.cat([cls, tokens], 1)  # (B, 17, W)

    def encode_image(self, pixels):
        x = F.interpolate(pixels.float(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        hidden = self.hidden_of_normalised((x - self.mean) / self.std)
        return hidden[:, 0] @ self.proj.T, hidden  # (B, E), (B, 17, W)


def tiny_sd15():
    from ipadapter_suite.training.frozen import FrozenModels
    enc = TinyEncoders()
    zero = enc.hidden_of_normalised(torch.zeros(1, 3, 32, 32))
    return FrozenModels(patcher=tiny_unet(), family="sd15", encode_latents=enc.encode_latents,
                        encode_text=enc.encode_text, encode_image=enc.encode_image, zero_image_hidden=zero,
                        embed_width=EMBED)


def write_dataset(folder, count: int, size: int = 64, seed: int = 0):
    """``count`` images with captions: each a colour field with a bright square somewhere (what the image prompt
    can tell the model), captions that say nothing about either."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        colour = rng.uniform(0, 1, 3)
        pixels = np.ones((size, size, 3)) * colour
        x, y = rng.integers(0, size // 2, 2)
        pixels[y:y + size // 2, x:x + size // 2] = 1 - colour
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text("a picture")
    return folder
