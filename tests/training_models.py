"""Tiny frozen models for the training tests: the host's own UNet class with the SD1.5 block layout at tiny
widths (as in parity_models), and small fixed random stand-ins for the VAE, the text encoder and the CLIP image
encoder. ``tiny_sd15`` is what ``--models-from training_models:tiny_sd15`` loads in a training subprocess;
``tiny_sdxl`` the same with the SDXL block layout, pooled text and the size conditioning ``y``; ``tiny_sd15_host``
adds the host objects that validation and evaluation sample through (a tiny host CLIP vision model, stand-in
CLIP text and VAE objects)."""
import hashlib
import math

import torch
import torch.nn.functional as F

CONTEXT = 32  # text / cross-attention width
EMBED, HIDDEN, PATCH = 24, 64, 8  # pooled width, hidden width, encoder patch size (on a 32 px input)
TEXT_TOKENS, VOCAB = 8, 64
POOLED = 16  # SDXL: pooled text width (y = pooled + 6 size embeddings of 256)


def _host():
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.append(str(repo))
    import launch  # the repository is on sys.path where this module is (tests, benchmarks, --models-from)
    launch.import_host(cpu=True)


def tiny_unet(seed: int = 0, layout: str = "sd15"):
    """A host ModelPatcher around a tiny SD1.5- or SDXL-layout BaseModel (EPS, the host's default discrete
    schedule); SDXL: the host's SDXL model class, whose ``y`` is the pooled text and six size embeddings."""
    return tiny_unet_predicting("EPS", layout=layout, seed=seed)


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
        self.pool = torch.randn(POOLED, CONTEXT, generator=g) / math.sqrt(CONTEXT)
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

    def encode_text_pooled(self, texts):
        """SDXL-style: the context and a pooled text embedding (B, POOLED) from its mean token."""
        context, _ = self.encode_text(texts)
        return context, context.mean(1) @ self.pool.T

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


def tiny_sdxl():
    from ipadapter_suite.training.frozen import FrozenModels
    enc = TinyEncoders()
    zero = enc.hidden_of_normalised(torch.zeros(1, 3, 32, 32))
    return FrozenModels(patcher=tiny_unet(layout="sdxl"), family="sdxl", encode_latents=enc.encode_latents,
                        encode_text=enc.encode_text_pooled, encode_image=enc.encode_image, zero_image_hidden=zero,
                        embed_width=EMBED)


class TinyHostText:
    """The two calls the nodes' sampling path makes on the host's CLIP object, over the stand-in text encoder."""

    def __init__(self, encoders: TinyEncoders):
        self.encoders = encoders

    def tokenize(self, text: str):
        return text

    def encode_from_tokens(self, tokens, return_pooled=False):
        context, pooled = self.encoders.encode_text([tokens])  # (1, T, C), None
        return (context, pooled) if return_pooled else context


class TinyHostVAE:
    """``decode``: latents (B, 4, h, w) -> IMAGE (B, 8h, 8w, 3) in [0, 1] (a fixed colour map, nearest upsampling)."""

    def __init__(self, seed: int = 2):
        self.colours = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))

    def decode(self, latents):
        x = torch.einsum("oc,bchw->bohw", self.colours, latents.float())  # (B, 3, h, w)
        return torch.sigmoid(F.interpolate(x, scale_factor=8, mode="nearest")).movedim(1, -1)


def tiny_sd15_host():
    """tiny_sd15 with a host ClipVisionModel (tests/host_models.py's tiny config, random weights) as its image
    encoder, and the stand-in text and VAE objects, as ``load_frozen`` fills them from real files."""
    import tempfile

    from host_models import tiny_clip_vision
    from ipadapter_suite.training.frozen import FrozenModels
    patcher = tiny_unet()  # imports the host first
    from ipadapter_suite.host.vision import zero_image_hidden
    with tempfile.TemporaryDirectory() as tmp:
        vision = tiny_clip_vision(tmp, seed=1)
    enc = TinyEncoders()

    def encode_image(pixels):
        out = vision.encode_image(pixels.movedim(1, -1))
        return out["image_embeds"].float(), out["penultimate_hidden_states"].float()

    embed_width = encode_image(torch.zeros(1, 3, 32, 32))[0].shape[-1]
    return FrozenModels(patcher=patcher, family="sd15", encode_latents=enc.encode_latents,
                        encode_text=enc.encode_text, encode_image=encode_image,
                        zero_image_hidden=zero_image_hidden(vision).float().cpu(), embed_width=embed_width,
                        vae=TinyHostVAE(), clip=TinyHostText(enc), clip_vision=vision)


# A tiny open_clip model config for the CLIP-I / CLIP-T scorer (random weights, saved by the tests).
TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def write_tiny_open_clip(folder, name: str = "tiny-clip-test", seed: int = 0):
    """-> (config .json path, weights file) of a tiny random open_clip model, registered with open_clip."""
    import json

    import open_clip
    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(str(config))
    torch.manual_seed(seed)
    weights = folder / f"{name}.bin"
    torch.save(open_clip.create_model(name).state_dict(), weights)
    return config, weights


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


def tiny_unet_predicting(model_type: str = "EPS", flags=None, layout: str = "sd15", zsnr: bool = False,
                         seed: int = 0):
    """``tiny_unet``'s model with another prediction type: ``model_type`` a host ModelType name (``V_PREDICTION``
    for an SD2.x-v-style model, ``FLOW``, ``IMG_TO_IMG`` ...), or, given ``flags`` (names of a checkpoint's marker
    keys, e.g. ``("v_pred", "ztsnr")`` as in NoobAI-XL v-pred), the type and ``zsnr`` setting the host's own
    SDXL config reads from those keys when it loads a checkpoint; ``zsnr``: the model config's zero-terminal-SNR
    setting, as such a checkpoint sets it."""
    _host()
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    from parity_models import HEADS, _randomize, _unet_config
    config = _unet_config(layout, CONTEXT)
    base_cls, model_cls = comfy.supported_models.SD15, comfy.model_base.BaseModel
    if layout == "sdxl":
        config = dict(config, num_classes="sequential", adm_in_channels=POOLED + 6 * 256)
        base_cls, model_cls = comfy.supported_models.SDXL, comfy.model_base.SDXL
    model_config = type(f"Tiny{base_cls.__name__}", (base_cls,),
                        {"unet_extra_config": {"num_heads": HEADS, "num_head_channels": -1}})(config)
    if zsnr:
        model_config.sampling_settings["zsnr"] = True
    if flags is not None:
        kind = model_config.model_type({key: torch.tensor([1.0]) for key in flags})
    else:
        kind = comfy.model_base.ModelType[model_type]
    model = model_cls(model_config, model_type=kind, device=torch.device("cpu"))
    _randomize(model.diffusion_model, seed)
    model.diffusion_model.float().eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def tiny_frozen(patcher, family: str = "sd15"):
    """The stand-in encoders of ``tiny_sd15`` / ``tiny_sdxl`` around another tiny host model."""
    from ipadapter_suite.training.frozen import FrozenModels
    enc = TinyEncoders()
    zero = enc.hidden_of_normalised(torch.zeros(1, 3, 32, 32))
    text = enc.encode_text_pooled if family == "sdxl" else enc.encode_text
    return FrozenModels(patcher=patcher, family=family, encode_latents=enc.encode_latents, encode_text=text,
                        encode_image=enc.encode_image, zero_image_hidden=zero, embed_width=EMBED)


def tiny_sd15_flow():
    """``--models-from`` factory: a tiny SD1.5-layout model on the host's flow (CONST) sampling."""
    return tiny_frozen(tiny_unet_predicting("FLOW"))


def tiny_sdxl_v_zsnr():
    """``--models-from`` factory: a tiny SDXL-layout model flagged v-prediction + zero terminal SNR, as the host
    reads a NoobAI-XL-style checkpoint's ``v_pred`` / ``ztsnr`` keys."""
    return tiny_frozen(tiny_unet_predicting(flags=("v_pred", "ztsnr"), layout="sdxl"), "sdxl")
