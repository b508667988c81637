"""The training objective in the host model's own convention: which output the UNet is trained to give, the noised
input it sees and the target it is compared with (docs/training.md#loss-and-optimiser).

The host model says what its output means through its ``model_sampling`` object (``comfy/model_sampling.py``), a
schedule class mixed with a prediction class. At inference the host turns the UNet's output into the denoised
latent with that prediction class's ``calculate_denoised``; training must give the target for which that formula
returns the clean latent x0 exactly. With x = x0 + sigma * noise (``EPS.noise_scaling``) and sigma_data = 1:

- eps (``EPS``: denoised = x - out * sigma): target = noise;
- v (``V_PREDICTION``: denoised = x / (sigma^2 + 1) - out * sigma / sqrt(sigma^2 + 1)):
  target = (noise - sigma * x0) / sqrt(sigma^2 + 1) = sqrt(a) * noise - sqrt(1 - a) * x0, a = 1 / (sigma^2 + 1)
  the alpha_cumprod of the step.

Both on the discrete schedule (``ModelSamplingDiscrete``: SD1.5, SDXL and their v-prediction checkpoints),
whose ``sigmas`` already hold the zero-terminal-SNR rescaling when the model says ``zsnr``. Anything else (flow,
x0, EDM, continuous schedules) is refused by name before training. The host classes are recognised on the
object's own class hierarchy, so this module imports nothing of the host.
"""
import torch

SUPPORTED = {"EPS": "eps", "V_PREDICTION": "v"}  # the host's prediction class -> what the UNet predicts
SCHEDULE = "ModelSamplingDiscrete"  # the host's discrete DDPM schedule (its ``sigmas`` and ``timestep``)
HOST_MODULE = "comfy.model_sampling"
PREDICTION_METHODS = ("calculate_denoised", "calculate_input", "noise_scaling")
NAMES = {"EPS": "eps", "V_PREDICTION": "v-prediction", "EDM": "EDM", "X0": "x0", "IMG_TO_IMG": "x0 (image to image)",
         "CONST": "flow", "COSMOS_RFLOW": "rectified flow (Cosmos)", "IMG_TO_IMG_FLOW": "flow (image to image)",
         "V_PREDICTION_DDPM": "v-prediction on the unscaled input"}


class UnsupportedModel(ValueError):
    """The host model's prediction type or schedule is not one the trainer can train correctly."""


def _defining_class(cls: type, names) -> type | None:
    """The first class of ``cls``'s MRO that defines one of ``names`` itself: the code the host runs."""
    return next((c for c in cls.__mro__ if any(n in vars(c) for n in names)), None)


def _host_name(cls: type | None) -> str:
    if cls is None:
        return "none"
    return cls.__name__ if cls.__module__ == HOST_MODULE else f"{cls.__module__}.{cls.__qualname__}"


def prediction_type(sampling) -> str:
    """'eps' or 'v' for a host ``model_sampling``; UnsupportedModel (one line: the model's prediction type and
    schedule, and what is supported) for anything else. Supported: the host's ``EPS`` or ``V_PREDICTION`` output
    (the formulas above), its ``EPS`` input scaling and noising, the ``ModelSamplingDiscrete`` schedule."""
    cls = type(sampling)
    prediction = _host_name(_defining_class(cls, PREDICTION_METHODS))
    schedule = _host_name(_defining_class(cls, ("timestep",)))
    scaled = all(_host_name(_defining_class(cls, (name,))) == "EPS" for name in ("calculate_input", "noise_scaling"))
    if prediction in SUPPORTED and scaled and schedule == SCHEDULE and hasattr(sampling, "sigmas"):
        return SUPPORTED[prediction]
    label = NAMES.get(prediction, prediction)
    raise UnsupportedModel(
        f"cannot train an IP-Adapter on this model: its prediction type is {label} (the host's {prediction} on "
        f"{schedule}); the trainer supports eps and v-prediction models (zero terminal SNR too) on the host's "
        f"discrete schedule ({SCHEDULE}, as SD1.5 and SDXL use)")


def describe(sampling) -> str:
    """What the run trains against, for the log: 'eps', 'v-prediction', 'v-prediction, zero terminal SNR'."""
    name = {"eps": "eps", "v": "v-prediction"}[prediction_type(sampling)]
    return name + (", zero terminal SNR" if getattr(sampling, "zsnr", False) else "")


def step_sigmas(sampling, timesteps: torch.Tensor) -> torch.Tensor:
    """(B,) schedule indices -> (B,) sigmas of the host's schedule (fp32, on the schedule's device)."""
    return sampling.sigmas[timesteps.to(sampling.sigmas.device)]


def noised_input(sampling, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """-> (the UNet's input (B, C, h, w), its timestep values (B,) float), as the host's sampler makes them at
    these steps: x = x0 + sigma * noise (``noise_scaling``), input = ``calculate_input(sigma, x)``
    (= sqrt(a) * x0 + sqrt(1 - a) * noise), t = ``timestep(sigma)``."""
    sigma = step_sigmas(sampling, timesteps)  # (B,)
    t = sampling.timestep(sigma).float().to(latents.device)  # (B,): the index again on the discrete schedule
    sigma = sigma.to(latents).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    noisy = sampling.noise_scaling(sigma, noise.to(latents), latents)
    return sampling.calculate_input(sigma, noisy), t


def target(sampling, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w): the output for which the host's ``calculate_denoised`` gives ``latents`` back: the noise for
    eps models, v = (sd^2 * noise - sigma * x0) / (sd * sqrt(sigma^2 + sd^2)) for v-prediction (sd =
    sigma_data, 1 on the discrete schedule: sqrt(a) * noise - sqrt(1 - a) * x0)."""
    if prediction_type(sampling) == "eps":
        return noise.float()
    sigma = step_sigmas(sampling, timesteps).to(latents.device, torch.float32).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    sd = float(sampling.sigma_data)
    return (sd ** 2 * noise.float() - sigma * latents.float()) / (sd * (sigma ** 2 + sd ** 2).sqrt())
