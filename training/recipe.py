"""The training recipe's random draws and unconditional inputs, as pure functions (docs/training.md#training-recipe).

Every draw of a sample (drop choice, timestep, noise) comes from a generator seeded with (seed, position), the
sample's global position in the training stream, so a resumed run or a run on more processes draws exactly what
one uninterrupted process draws.
"""
from dataclasses import dataclass

import torch

_GOLDEN = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class DropRates:
    """Per-sample probabilities of the one draw: image only, text only, both (the paper: 5 % each)."""
    image: float = 0.05
    text: float = 0.05
    both: float = 0.05

    def __post_init__(self):
        if min(self.image, self.text, self.both) < 0 or self.image + self.text + self.both > 1:
            raise ValueError(f"drop rates must be >= 0 and sum to <= 1, got {self}")


@dataclass(frozen=True)
class Draws:
    """Draws for a batch of B samples."""
    drop_image: torch.Tensor  # (B,) bool
    drop_text: torch.Tensor  # (B,) bool
    timesteps: torch.Tensor  # (B,) int64 in [0, num_timesteps)
    noise: torch.Tensor  # (B, C, h, w)


def sample_generator(seed: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * _GOLDEN + position) % (2 ** 63))


def draw(seed: int, positions, latent_shape, num_timesteps: int, rates: DropRates) -> Draws:
    """One draw per position: u ~ U(0, 1) picks the drop case, then a uniform timestep, then the noise."""
    drop_image, drop_text, timesteps, noise = [], [], [], []
    for position in positions:
        gen = sample_generator(seed, int(position))
        u = torch.rand((), generator=gen).item()
        image_only = u < rates.image
        text_only = rates.image <= u < rates.image + rates.text
        both = rates.image + rates.text <= u < rates.image + rates.text + rates.both
        drop_image.append(image_only or both)
        drop_text.append(text_only or both)
        timesteps.append(int(torch.randint(0, num_timesteps, (), generator=gen)))
        noise.append(torch.randn(tuple(latent_shape), generator=gen))
    return Draws(torch.tensor(drop_image, dtype=torch.bool), torch.tensor(drop_text, dtype=torch.bool),
                 torch.tensor(timesteps, dtype=torch.long), torch.stack(noise))


def where_rows(mask: torch.Tensor, dropped: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Row-wise select: ``dropped`` (1 or B rows) where mask (B,) is set, else ``kept`` (B, ...)."""
    mask = mask.to(kept.device).view(-1, *([1] * (kept.ndim - 1)))
    return torch.where(mask, dropped.to(kept).expand_as(kept), kept)


def uncond_image_features(feature: str, features: torch.Tensor, zero_image_hidden: torch.Tensor | None
                          ) -> torch.Tensor:
    """What a dropped image becomes: a zero embedding for pooled features (base), the encoder's hidden states
    of the all-zero normalised pixel tensor for hidden features (plus, full-face)."""
    if feature == "pooled":
        return torch.zeros_like(features[:1])  # (1, E)
    if zero_image_hidden is None:
        raise ValueError("hidden-state adapters need the encoder's output for the zero-normalised image")
    return zero_image_hidden.to(features)  # (1, P, W)


def epoch_permutation(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The order of ``count`` records in one epoch."""
    return torch.randperm(count, generator=sample_generator(seed ^ 0x5EED, epoch))
