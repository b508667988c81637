"""Training v-prediction models: tiny host models of each prediction type (built as the host builds them from a
checkpoint: a model config and a ModelType, or the marker keys the host's SDXL config reads), CPU.

What must hold: the UNet sees the noised latent of the written DDPM formula and is trained against the noise (eps
models) or v (v-prediction), on the model's own schedule, zero-terminal-SNR rescaled when the model says so; a
perfect prediction denoises back to x0 through the host's own ``calculate_denoised``; other prediction types stop
the run with a one-line error before anything is trained."""
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from conftest import HOST, NO_HOST_REASON

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
STEPS = [0, 1, 250, 500, 998, 999]  # both ends of the 1000-step schedule
HOST_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08  # the host keeps zsnr's last sigma finite (about 4519)


def sd_alphas_cumprod() -> torch.Tensor:
    """SD1.5 / SD2.x / SDXL's schedule, written out (float64): betas = linspace(sqrt(0.00085), sqrt(0.012),
    1000)^2 ("scaled linear"), alpha_cumprod = cumprod(1 - betas)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 (arXiv 2305.08891), Algorithm 1: sqrt(alpha_cumprod) shifted so its last value is 0 and
    scaled so its first keeps its value."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


def noised(alphas_cumprod, x0, noise, steps):
    """The DDPM forward process: sqrt(a_t) * x0 + sqrt(1 - a_t) * noise (the UNet's input in every SD family)."""
    a = alphas_cumprod[steps].view(-1, 1, 1, 1)
    return (a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()).float()


def velocity(alphas_cumprod, x0, noise, steps):
    """v = sqrt(a_t) * noise - sqrt(1 - a_t) * x0 (Salimans & Ho 2022, arXiv 2202.00512, section 4)."""
    a = alphas_cumprod[steps].view(-1, 1, 1, 1)
    return (a.sqrt() * noise.double() - (1 - a).sqrt() * x0.double()).float()


def spy_on_unet(frozen, answer=None) -> list:
    """Record (input, timesteps) of every call of the host UNet; with ``answer``, the UNet returns it instead of
    its output (times 0 plus the answer: the autograd graph still reaches the adapter)."""
    unet = frozen.base_model.diffusion_model
    original, calls = unet.forward, []

    def forward(x, timesteps=None, context=None, **kwargs):
        out = original(x, timesteps, context=context, **kwargs)
        calls.append((x.detach().clone(), timesteps.detach().clone()))
        return out if answer is None else out * 0 + answer.to(out)

    unet.forward = forward
    return calls


def training_module(frozen):
    from comfy.ldm.modules.attention import optimized_attention
    from ipadapter_suite.training.model import AdapterTraining, new_adapter, new_spec
    return AdapterTraining(new_adapter(frozen, new_spec(frozen, "base"), seed=0), frozen.base_model,
                           optimized_attention)


def draws(n: int, channels: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 24, generator=g), torch.randn(n, 8, 32, generator=g),  # features, context
            torch.randn(n, channels, 8, 8, generator=g), torch.randn(n, channels, 8, 8, generator=g))


def one_forward(frozen, steps, y=None):
    """-> (x0, noise, what the UNet received, its timesteps, the trainer's target) at ``steps``."""
    module = training_module(frozen)
    calls = spy_on_unet(frozen)
    features, context, x0, noise = draws(len(steps))
    timesteps = torch.tensor(steps)
    with torch.no_grad():
        module(features, context, x0, noise, timesteps, y=y)
    (unet_in, unet_t), = calls
    return x0, noise, unet_in, unet_t, module.target(x0, noise, timesteps)


def host_denoised(frozen, alphas_cumprod, x0, noise, steps, output):
    """x0 as the host's sampler recovers it from ``output`` at these steps: ``calculate_denoised`` of the noisy
    sample x0 + sigma * noise, sigma = sqrt((1 - a) / a) from the written schedule."""
    a = alphas_cumprod[steps]
    sigma = ((1 - a) / a).sqrt().float()
    x = x0 + sigma.view(-1, 1, 1, 1) * noise
    return frozen.base_model.model_sampling.calculate_denoised(sigma, output, x)


@pytest.mark.parametrize("model_type,prediction", [("EPS", "eps"), ("V_PREDICTION", "v")])
def test_noising_and_target_follow_the_written_formulas(host, model_type, prediction):
    """SD1.5-layout eps and SD2.x-style v models, at steps 0, 1, 250, 500, 998, 999: the UNet receives
    sqrt(a) x0 + sqrt(1 - a) noise and the step index as its timestep; the target is the noise itself (eps) or
    sqrt(a) noise - sqrt(1 - a) x0 (v), a from the schedule written out here; the host's calculate_denoised turns
    that target back into x0."""
    from training_models import tiny_frozen, tiny_unet_predicting
    frozen = tiny_frozen(tiny_unet_predicting(model_type))
    ac = sd_alphas_cumprod()
    x0, noise, unet_in, unet_t, target = one_forward(frozen, STEPS)
    torch.testing.assert_close(unet_in, noised(ac, x0, noise, STEPS), rtol=1e-5, atol=1e-5)
    assert unet_t.tolist() == [float(s) for s in STEPS]
    if prediction == "eps":
        assert torch.equal(target, noise)
    else:
        torch.testing.assert_close(target, velocity(ac, x0, noise, STEPS), rtol=1e-5, atol=1e-5)
        assert (target - noise).abs().max() > 0.5  # v is not the noise: the check tells them apart
    denoised = host_denoised(frozen, ac, x0, noise, STEPS, target)
    torch.testing.assert_close(denoised, x0, rtol=0, atol=1e-3)


def test_v_prediction_checkpoint_trains_on_v(host):
    """An SDXL model flagged as the host reads NoobAI-XL v-pred's ``v_pred`` key: the batch the trainer builds
    carries v of the written formula at its drawn steps, and a training step's loss is 0 when the UNet answers
    exactly v and large when it answers the noise (what an eps trainer would ask for)."""
    from accelerate import Accelerator

    from ipadapter_suite.training.recipe import DropRates
    from ipadapter_suite.training.train import Run, model_inputs, train_step, unconditional_inputs
    from training_models import tiny_frozen, tiny_unet_predicting
    frozen = tiny_frozen(tiny_unet_predicting(flags=("v_pred",), layout="sdxl"), "sdxl")
    assert not frozen.base_model.model_sampling.zsnr
    args = SimpleNamespace(seed=3, resolution=64, cache=None)
    run = Run(args, frozen, "pooled", *unconditional_inputs(args, frozen, False, "pooled"), cached=False,
              dataset_size=16, rates=DropRates(), skipped=Counter())
    batch = {"pixels": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)),
             "text": ["a", "b"], "position": torch.tensor([0, 1]), "size": 2}
    inputs = model_inputs(run, batch, torch.device("cpu"))
    steps = inputs["timesteps"].tolist()
    v = velocity(sd_alphas_cumprod(), inputs["latents"], inputs["noise"], steps)
    torch.testing.assert_close(inputs["target"], v, rtol=1e-5, atol=1e-5)
    module = training_module(frozen)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    accelerator = Accelerator()
    losses = []
    for answer in (v, inputs["noise"]):
        spy_on_unet(frozen, answer)
        losses.append(train_step(accelerator, module, optimizer, inputs, 0.5, 0.0).item())
    assert losses[0] < 1e-10 and losses[1] > 0.1, losses


def test_zsnr_checkpoint_uses_the_rescaled_schedule(host):
    """An SDXL model flagged ``v_pred`` + ``ztsnr`` (the host sets zsnr from them): the UNet input and the v
    target follow the zero-terminal-SNR schedule written out here (last alpha_cumprod 0; the host stores 4.9e-8),
    so at the last step the input is pure noise and the target is -x0; the unrescaled schedule would leave
    0.068 x0 in that input."""
    from training_models import tiny_frozen, tiny_unet_predicting
    frozen = tiny_frozen(tiny_unet_predicting(flags=("v_pred", "ztsnr"), layout="sdxl"), "sdxl")
    assert frozen.base_model.model_sampling.zsnr
    ac = zero_terminal_snr(sd_alphas_cumprod())
    assert ac[-1] == 0 and abs(ac[0] - sd_alphas_cumprod()[0]) < 1e-15
    y = torch.zeros(len(STEPS), frozen.base_model.adm_channels)
    x0, noise, unet_in, unet_t, target = one_forward(frozen, STEPS, y=y)
    # the host's last a is 4.9e-8, not 0: sqrt(a) = 2.2e-4 there
    torch.testing.assert_close(unet_in[:-1], noised(ac, x0, noise, STEPS)[:-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target[:-1], velocity(ac, x0, noise, STEPS)[:-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unet_in[-1], noise[-1], rtol=0, atol=1e-3)
    torch.testing.assert_close(target[-1], -x0[-1], rtol=0, atol=1e-3)
    plain = noised(sd_alphas_cumprod(), x0, noise, STEPS)
    assert (plain[-1] - unet_in[-1]).abs().max() > 0.05  # the check tells the two schedules apart
    assert unet_t.tolist() == [float(s) for s in STEPS]
    denoised = host_denoised(frozen, ac.clamp(min=HOST_LAST_ALPHA_CUMPROD), x0, noise, STEPS, target)
    torch.testing.assert_close(denoised, x0, rtol=0, atol=1e-3)


def test_zsnr_v_prediction_trains_end_to_end(host, tmp_path, caplog):
    """``python -m training.train`` on a v-prediction + zsnr model (``--models-from``): it logs what it trains
    against and writes the adapter."""
    from ipadapter_suite.training.train import main
    from training_models import write_dataset
    data = write_dataset(tmp_path / "data", 4, seed=0)
    with caplog.at_level("INFO"):
        path = main(["--models-from", "training_models:tiny_sdxl_v_zsnr", "--data", str(data), "--resolution", "64",
                     "--batch-size", "2", "--num-workers", "0", "--max-steps", "1", "--output-dir",
                     str(tmp_path / "run")])
    assert path.is_file()
    assert any("training target: v-prediction, zero terminal SNR" in r.getMessage() for r in caplog.records)


UNSUPPORTED = [  # (how the tiny model is made, what the message calls its prediction type)
    (dict(model_type="FLOW"), "flow"),
    (dict(model_type="IMG_TO_IMG"), "x0"),
    (dict(flags=("edm_mean", "edm_std"), layout="sdxl"), "EDM"),  # Playground v2.5
    (dict(flags=("edm_vpred.sigma_max",), layout="sdxl"), "v-prediction (the host's V_PREDICTION on "
                                                           "ModelSamplingContinuousEDM"),  # CosXL-style
]


@pytest.mark.parametrize("made,named", UNSUPPORTED, ids=["flow", "x0", "edm", "v-edm"])
def test_unsupported_prediction_types_are_refused(host, made, named):
    """Flow, x0, EDM and v-prediction on a continuous EDM schedule: building the training module stops with one
    line naming the model's prediction type and what is supported."""
    from ipadapter_suite.training.objective import UnsupportedModel
    from training_models import tiny_frozen, tiny_unet_predicting
    frozen = tiny_frozen(tiny_unet_predicting(**made), made.get("layout", "sd15"))
    with pytest.raises(UnsupportedModel) as error:
        training_module(frozen)
    message = str(error.value)
    assert "\n" not in message and f"prediction type is {named}" in message, message
    assert "supports eps and v-prediction" in message, message


def test_refused_before_training(host, tmp_path, monkeypatch):
    """The trainer stops before building the adapter: with ``--models-from`` right after the factory, and with
    ``--checkpoint`` right after the host loaded the UNet, before the image and text encoders are loaded; the
    exit message is the one line, and nothing is written."""
    import ipadapter_suite.host.loaders as loaders
    import ipadapter_suite.training.train as train
    from training_models import tiny_unet_predicting, write_dataset

    def never(*_, **__):
        raise AssertionError("reached after the refusal")

    monkeypatch.setattr(train, "build", never)
    monkeypatch.setattr(loaders, "load_unet", lambda path, dtype: tiny_unet_predicting("FLOW"))
    monkeypatch.setattr(loaders, "load_clip_vision", never)
    monkeypatch.setattr(loaders, "load_text_and_vae", never)
    data = write_dataset(tmp_path / "data", 2, seed=0)
    common = ["--data", str(data), "--resolution", "64", "--num-workers", "0", "--max-steps", "1"]
    for i, models in enumerate((["--models-from", "training_models:tiny_sd15_flow"],
                                ["--checkpoint", str(tmp_path / "flow.safetensors"), "--clip-vision",
                                 str(tmp_path / "vision.safetensors")])):
        out = tmp_path / f"run{i}"
        with pytest.raises(SystemExit) as error:
            train.main([*models, *common, "--output-dir", str(out)])
        message = str(error.value.code)
        assert "\n" not in message and "prediction type is flow" in message, message
        assert not (out / "checkpoints").exists()
