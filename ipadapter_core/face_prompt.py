"""A face prompt: what the FaceID adapters read from the faces of the reference images (docs/faceid.md#face-prompt).

It travels on the same IMAGE_PROMPT socket as a CLIP image prompt; each adapter checks that it got the kind it
reads (a FaceID adapter refuses a CLIP image prompt and a CLIP adapter a face prompt, naming the node to use).
"""
from dataclasses import dataclass

import torch

from .errors import EncoderMismatchError
from .spec import ENCODERS_BY_HIDDEN_WIDTH, AdapterSpec


@dataclass(frozen=True)
class FacePrompt:
    """n faces. embeds (n, 512): the ArcFace embeddings divided by their norm (insightface's ``normed_embedding``);
    raw (n, 512): the embeddings as the recognizer gives them (``embedding``, for Portrait unnorm). hidden
    (n, P, W): the CLIP penultimate hidden states of the aligned face crops (Plus / Plus v2), uncond_hidden the
    same for the mean-grey image (the reference's negative); None when no CLIP vision model was given.
    sources: the index of the image each face comes from."""
    embeds: torch.Tensor
    raw: torch.Tensor
    hidden: torch.Tensor | None = None
    uncond_hidden: torch.Tensor | None = None
    sources: tuple[int, ...] = ()

    def __post_init__(self):
        n = self.embeds.shape[0]
        if self.raw.shape != self.embeds.shape or (self.hidden is not None and self.hidden.shape[0] != n):
            raise ValueError(f"a face prompt needs one raw embedding and one crop per face ({n} faces)")

    @property
    def count(self) -> int:
        return self.embeds.shape[0]

    @property
    def regions(self) -> None:
        """Faces have no tile regions (docs/inference.md#tiled-encoding): one branch for all of them."""
        return None

    @property
    def encoder(self) -> str:
        if self.hidden is None:
            return "a face prompt without face crops"
        width = self.hidden.shape[-1]
        return "a face prompt with " + ENCODERS_BY_HIDDEN_WIDTH.get(width, f"a CLIP vision model of width {width}")

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        names = ("embeds", "raw", "hidden", "uncond_hidden")
        return [(name, getattr(self, name)) for name in names if getattr(self, name) is not None]

    def check_fits(self, spec: AdapterSpec) -> None:
        if not spec.is_faceid:
            raise EncoderMismatchError(
                f"this {spec.describe} reads CLIP image features, but it got a face prompt (Encode Face Prompt): "
                "encode the image with Encode Image Prompt for it, or load a FaceID adapter for the face prompt")
        if spec.kind != "faceid_plus":
            return
        if self.hidden is None:
            raise EncoderMismatchError(
                f"this {spec.describe} also reads the face crops through CLIP vision: connect Load CLIP Vision "
                f"({ENCODERS_BY_HIDDEN_WIDTH.get(spec.clip_width, 'its encoder')}) to Encode Face Prompt's "
                "clip_vision")
        if self.hidden.shape[-1] != spec.clip_width:
            raise EncoderMismatchError(
                f"this {spec.describe} reads face crops of CLIP hidden width {spec.clip_width}, but the face prompt "
                f"was encoded with {self.encoder}: load {ENCODERS_BY_HIDDEN_WIDTH.get(spec.clip_width, 'that')} "
                "in Load CLIP Vision and encode the faces again")

    def adapter_features(self, spec: AdapterSpec):
        """(cond, uncond) in the form the adapter's projection reads (AdapterModel.image_tokens): the face
        embeddings (raw ones for Portrait unnorm) against zero embeddings; Plus: pairs with the crops' hidden
        states against the mean-grey image's (docs/faceid.md#unconditional-tokens)."""
        self.check_fits(spec)
        face = self.raw if spec.variant == "portrait unnorm" else self.embeds
        zeros = face.new_zeros((1, face.shape[1])).expand(face.shape[0], -1)  # (n, 512), one row shared
        if spec.kind != "faceid_plus":
            return face, zeros
        return (face, self.hidden), (zeros, self.uncond_hidden)


def normalised(embeddings: torch.Tensor) -> torch.Tensor:
    """(n, 512) -> each row divided by its L2 norm (insightface's ``normed_embedding``)."""
    return embeddings / embeddings.norm(dim=-1, keepdim=True)
