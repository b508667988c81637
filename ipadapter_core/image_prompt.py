"""IMAGE_PROMPT: everything any adapter variant needs from one CLIP vision encode."""
from dataclasses import dataclass

import torch

from .errors import EncoderMismatchError
from .spec import ENCODERS_BY_HIDDEN_WIDTH, AdapterSpec


@dataclass(frozen=True)
class ImagePrompt:
    """Features of n reference images and of their unconditional (negative) counterparts.

    embeds (n, E): pooled, projected image embeddings. hidden (n, P, W): penultimate hidden states.
    uncond_*: the same for the CFG uncond rows (reference semantics: zero embeddings and the encoder's hidden
    states of the all-zero normalised pixel tensor, or a user's negative image).
    """
    embeds: torch.Tensor
    hidden: torch.Tensor
    uncond_embeds: torch.Tensor
    uncond_hidden: torch.Tensor

    def __post_init__(self):
        n = self.embeds.shape[0]
        if not (self.hidden.shape[0] == self.uncond_embeds.shape[0] == self.uncond_hidden.shape[0] == n):
            raise ValueError("an image prompt needs as many uncond rows as reference images "
                             f"(embeds {n}, hidden {self.hidden.shape[0]}, uncond {self.uncond_embeds.shape[0]}"
                             f"/{self.uncond_hidden.shape[0]})")

    @property
    def count(self) -> int:
        return self.embeds.shape[0]

    @property
    def encoder(self) -> str:
        width = self.hidden.shape[-1]
        return ENCODERS_BY_HIDDEN_WIDTH.get(width, f"a CLIP vision model with hidden width {width}")

    def features(self, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) features of the kind an adapter reads: "pooled" or "hidden"."""
        if feature == "pooled":
            return self.embeds, self.uncond_embeds
        return self.hidden, self.uncond_hidden

    def check_fits(self, spec: AdapterSpec) -> None:
        cond, _ = self.features(spec.feature)
        if cond.shape[-1] != spec.encoder_width:
            raise EncoderMismatchError(
                f"this {spec.describe} reads {spec.feature} image features of width {spec.encoder_width}, but "
                f"the image prompt was encoded with {self.encoder} ({spec.feature} width {cond.shape[-1]}). "
                f"Load {spec.encoder} in Load CLIP Vision and encode the image again.")


def with_default_uncond(embeds: torch.Tensor, hidden: torch.Tensor, zero_image_hidden: torch.Tensor
                        ) -> ImagePrompt:
    """The reference's negative: zero embeddings (base) and the zero-pixel hidden states (plus, full-face)."""
    n = embeds.shape[0]
    uncond_hidden = zero_image_hidden.to(hidden).expand(n, *hidden.shape[1:])  # (n, P, W), no copy
    return ImagePrompt(embeds, hidden, torch.zeros_like(embeds), uncond_hidden)
