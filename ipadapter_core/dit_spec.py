"""What a DiT IP-Adapter file is (``DiTAdapterSpec``) and the file checks its families share; each family reads
its own layout in its own module (``dit.py`` lists them)."""
from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import AdapterFileError

FLUX_DOUBLE_BLOCKS = 19
FLUX_SINGLE_BLOCKS = 38
DIT_FAMILY_NAMES = {"flux": "Flux", "sd35": "SD3.5 Large"}
DIT_ENCODERS = {("pooled", 768): "CLIP ViT-L/14", ("hidden", 1152): "SigLIP so400m-384",
                ("pooled", 1152): "SigLIP so400m-384 (with its pooling head)"}
INSTANTX_FIRST_KEY = "ip_adapter.0.to_k_ip.weight"  # h94 files number their layers from 1; InstantX's from 0


@dataclass(frozen=True)
class DiTAdapterSpec:
    """What a DiT IP-Adapter file is. kind: "xlabs_flux", "instantx_flux" or "instantx_sd35". family: the
    transformer it is for ("flux", "sd35"). feature / encoder_width: which encoder output it reads and its width.
    tokens: image tokens per image. cross_attention_dim: the tokens' width. hidden: the transformer's width (rows
    of each K'/V' projection). double_blocks / single_blocks: the block indices that get an image branch."""
    kind: str
    family: str
    feature: str
    encoder_width: int
    tokens: int
    cross_attention_dim: int
    hidden: int
    double_blocks: tuple[int, ...]
    single_blocks: tuple[int, ...] = ()
    resampler_dim: int = 0  # instantx_sd35: the time-conditioned resampler's sizes
    resampler_depth: int = 0
    resampler_heads: int = 0
    time_dim: int = 0
    proj_hidden: int = 0  # instantx_flux: the inner width of its MLP projection

    @property
    def is_faceid(self) -> bool:  # read by the image prompts' pairing checks, as on AdapterSpec
        return False

    @property
    def encoder(self) -> str:
        return DIT_ENCODERS.get((self.feature, self.encoder_width),
                                f"a CLIP vision model with {self.feature} width {self.encoder_width}")

    @property
    def family_name(self) -> str:
        return DIT_FAMILY_NAMES[self.family]

    @property
    def describe(self) -> str:
        from .dit import dit_family  # the registry imports the family modules, which import this one
        return f"{dit_family(self.kind).title} ({self.tokens} tokens) (needs {self.encoder})"

    @property
    def block_keys(self) -> tuple[tuple[str, int], ...]:
        """The host's ``patches_replace["dit"]`` keys of the blocks with an image branch, in run order."""
        return (tuple(("double_block", i) for i in self.double_blocks)
                + tuple(("single_block", i) for i in self.single_blocks))


def check_floats(flat: Mapping) -> None:
    for key, value in flat.items():
        dtype = getattr(value, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise AdapterFileError(f"'{key}' has dtype {dtype}: IP-Adapter weights are floating point "
                                   "(fp32, fp16 or bf16); the file is damaged or not an IP-Adapter")


def file_parts(flat: Mapping, name: str) -> dict[str, dict]:
    parts = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        if part not in parts:
            raise AdapterFileError(f"unexpected key '{key}' in an {name} file: it has only 'image_proj.*' and "
                                   "'ip_adapter.*'")
        parts[part][rest] = value
    return parts


def unsupported_dit_layout(image_proj: Mapping, ip_layers: Mapping) -> str | None:
    """What a nested (``image_proj`` / ``ip_adapter``) file is when it is one of the DiT adapters this extension
    recognises but does not run, as the refusal's message; None for anything else
    (docs/formats.md#dit-files-in-the-h94-reader).

    InstantX SD3.5-Large: per-block ``N.norm_ip.linear.*`` (the AdaLN of the image tokens) and a resampler with
    ``time_embedding.*`` (supported: loaded through the DiT path; only a torch file that cannot be peeked at
    lazily ends up here). InstantX FLUX.1-dev: ``N.to_{k,v}_ip.weight`` from block N = 0 (h94 files number only
    cross-attention layers, all odd): supported through the DiT path; named here when the h94 reader gets it."""
    if any(k.endswith(".norm_ip.linear.weight") for k in ip_layers) or "time_embedding.linear_1.weight" in image_proj:
        return ("this is the InstantX SD3.5-Large IP-Adapter in a torch file that cannot be opened lazily (an old "
                "torch.save format): save it again as .safetensors (keys 'image_proj.*', 'ip_adapter.*')")
    if "0.to_k_ip.weight" in ip_layers:  # h94 files number their layers from 1
        return ("this is the InstantX FLUX.1-dev IP-Adapter, a Flux adapter: load it with Load IP-Adapter and "
                "apply it to a Flux model (the SD1.5/SDXL presets and layer tables do not take it)")
    return None
