"""What the training tests share: running the trainer in a subprocess (and SIGKILLing it at a chosen point),
reading what it wrote (adapter tensors, logged losses) and the held-out loss of an adapter.

Imported by the test modules after ``conftest`` (the host is found there)."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import safetensors.torch
import torch

from conftest import HOST, REPO

TESTS = Path(__file__).resolve().parent


def subprocess_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), COMFYUI_PATH=str(HOST))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def adapter_tensors(path):
    return safetensors.torch.load_file(str(path))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs training in a subprocess and SIGKILLs it at a chosen point: no clean exit, no finally blocks.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import launch
    launch.import_extension()
    import ipadapter_suite.training.checkpoint as ckpt
    import ipadapter_suite.training.train as train
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


def held_out_losses(frozen, adapter_path, folder, seed=5, size=64):
    """Mean epsilon MSE over fixed timesteps/noise, same draws for lambda = 1 and lambda = 0, no drops; SDXL
    models get their size conditioning ``y`` from the pooled caption embedding."""
    from comfy.ldm.modules.attention import optimized_attention
    from ipadapter_suite.ipadapter_core import IPAdapterModel, load_adapter_file
    from ipadapter_suite.training.data import load_image
    from ipadapter_suite.training.model import AdapterTraining
    adapter = IPAdapterModel.from_state_dict(load_adapter_file(adapter_path)[0])
    module = AdapterTraining(adapter, frozen.base_model, optimized_attention)
    images = sorted(folder.glob("*.png"))
    pixels = torch.stack([load_image(str(p), size) for p in images])
    latents = frozen.encode_latents(pixels)
    features, _ = frozen.encode_image(pixels)
    context, pooled = frozen.encode_text(["a picture"] * len(images))
    y = None if pooled is None else frozen.base_model.encode_adm(pooled_output=pooled, width=size, height=size)
    g = torch.Generator().manual_seed(seed)
    results = {1.0: 0.0, 0.0: 0.0}
    with torch.no_grad():
        for _ in range(4):
            t = torch.randint(0, 1000, (len(images),), generator=g)
            noise = torch.randn(latents.shape, generator=g)
            for weight in results:
                eps = module(features, context, latents, noise, t, y=y, weight=weight)
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
