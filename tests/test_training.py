"""Training: tiny host models (the host's UNet class at tiny widths, seeded stand-in encoders), CPU.

What must hold: it learns; a SIGKILLed run resumes exactly; 2 processes equal 1 with the doubled batch; the file
it writes loads in LoadIPAdapter and in diffusers; drops follow the recipe; a crash mid-checkpoint leaves the
previous one usable; bad data is skipped and counted."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from conftest import HOST, NO_HOST_REASON, REPO

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
TESTS = Path(__file__).resolve().parent
FACTORY = "training_models:tiny_sd15"
STEPS, SAVE_EVERY = 8, 2


def base_args(data, out, *extra):
    return ["--models-from", FACTORY, "--data", str(data), "--resolution", "64", "--batch-size", "4",
            "--learning-rate", "1e-3", "--num-workers", "0", "--output-dir", str(out), "--seed", "7",
            "--log-every", "1", *map(str, extra)]


def train(data, out, *extra):
    from training.train import main
    return main(base_args(data, out, *extra))


def subprocess_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), COMFYUI_PATH=str(HOST))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def adapter_tensors(path):
    return safetensors.torch.load_file(str(path))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def tiny_data(host, tmp_path_factory):
    from training_models import write_dataset
    return write_dataset(tmp_path_factory.mktemp("data") / "train", 16, seed=0)


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory):
    """The uninterrupted run the resume tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    return train(tiny_data, out, "--max-steps", STEPS, "--save-every", SAVE_EVERY)


# Runs training in a subprocess and SIGKILLs it at a chosen point: no clean exit, no finally blocks.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import training.checkpoint as ckpt
    import training.train as train
    mode, at = sys.argv[1], int(sys.argv[2])
    if mode == "after-save":  # the checkpoint of step `at` is complete: die in the next step
        original_step = train.train_step
        saved = {"n": 0}
        original_save = train.save
        def save(accelerator, module, args, step, run, final=False):
            original_save(accelerator, module, args, step, run, final)
            saved["n"] = step
        def train_step(*a, **k):
            if saved["n"] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original_step(*a, **k)
        train.save, train.train_step = save, train_step
    else:  # mid-write: the adapter of checkpoint `at` is half written when the process dies
        original_export = ckpt.export_adapter
        def export_adapter(adapter, path):
            original_export(adapter, path)
            if f"checkpoint-{at:08d}.partial" in str(path):
                data = open(path, "rb").read()
                open(path, "wb").write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt.export_adapter = export_adapter
    train.main(sys.argv[3:])
""")


def run_killed(tmp_path, mode, at, args):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), mode, str(at), *args], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_it_learns(tiny_data, tmp_path):
    """After training, the held-out denoising loss with the adapter (lambda = 1, the target image as prompt) is
    clearly below the loss at lambda = 0, and the logged training loss went down."""
    from training_models import tiny_sd15, write_dataset
    out = tmp_path / "run"
    path = train(tiny_data, out, "--max-steps", 40, "--save-every", 100, "--learning-rate", "3e-3")
    held_out = write_dataset(tmp_path / "held_out", 8, seed=123)
    with_adapter, without = held_out_losses(tiny_sd15(), path, held_out)
    assert with_adapter < 0.8 * without, (with_adapter, without)
    losses = logged_losses(out)
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10, losses


def held_out_losses(frozen, adapter_path, folder, seed=5):
    """Mean epsilon MSE over fixed timesteps/noise, same draws for lambda = 1 and lambda = 0, no drops."""
    from comfy.ldm.modules.attention import optimized_attention
    from ipadapter_core import IPAdapterModel, load_adapter_file
    from training.data import load_image
    from training.model import AdapterTraining
    adapter = IPAdapterModel.from_state_dict(load_adapter_file(adapter_path)[0])
    module = AdapterTraining(adapter, frozen.base_model, optimized_attention)
    images = sorted(folder.glob("*.png"))
    pixels = torch.stack([load_image(str(p), 64) for p in images])
    latents = frozen.encode_latents(pixels)
    features, _ = frozen.encode_image(pixels)
    context, _ = frozen.encode_text(["a picture"] * len(images))
    g = torch.Generator().manual_seed(seed)
    results = {1.0: 0.0, 0.0: 0.0}
    with torch.no_grad():
        for _ in range(4):
            t = torch.randint(0, 1000, (len(images),), generator=g)
            noise = torch.randn(latents.shape, generator=g)
            for weight in results:
                eps = module(features, context, latents, noise, t, weight=weight)
                results[weight] += torch.nn.functional.mse_loss(eps, noise).item() / 4
    return results[1.0], results[0.0]


def logged_losses(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    logs = [p.parent for p in Path(out, "logs").rglob("events.out.tfevents.*")]
    values = {}
    for folder in logs:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        if "train/loss" in acc.Tags().get("scalars", []):
            values.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return [values[k] for k in sorted(values)]


def test_resume_after_sigkill_is_exact(tiny_data, reference_run, tmp_path):
    out = tmp_path / "killed"
    args = base_args(tiny_data, out, "--max-steps", STEPS, "--save-every", SAVE_EVERY)
    run_killed(tmp_path, "after-save", STEPS // 2, args)
    assert not (out / "ip-adapter_trained.safetensors").exists()
    resumed = train(tiny_data, out, "--max-steps", STEPS, "--save-every", SAVE_EVERY, "--resume", "latest")
    assert json.loads((out / "checkpoints" / f"checkpoint-{STEPS:08d}" / "trainer_state.json").read_text())[
        "step"] == STEPS
    assert max_diff(adapter_tensors(resumed), adapter_tensors(reference_run)) <= 1e-6


def test_kill_during_checkpoint_write_keeps_previous(tiny_data, reference_run, tmp_path, ext):
    from training.checkpoint import resolve_resume
    out = tmp_path / "crashed"
    args = base_args(tiny_data, out, "--max-steps", STEPS, "--save-every", SAVE_EVERY)
    run_killed(tmp_path, "mid-write", 6, args)
    folder = out / "checkpoints"
    assert (folder / ".checkpoint-00000006.partial").is_dir()  # the crash left its half-written folder
    latest = resolve_resume("latest", folder)
    assert latest.name == "checkpoint-00000004"
    loaded = ext.nodes.host.load_adapter(str(latest / "ip-adapter_trained.safetensors"))
    assert loaded.spec.kind == "base"
    resumed = train(tiny_data, out, "--max-steps", STEPS, "--save-every", SAVE_EVERY, "--resume", "latest")
    assert max_diff(adapter_tensors(resumed), adapter_tensors(reference_run)) <= 1e-6
    assert not (folder / ".checkpoint-00000006.partial").exists()
