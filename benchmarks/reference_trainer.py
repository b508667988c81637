"""The reference trainer, tencent-ailab/IP-Adapter's ``tutorial_train.py``, run as it is for the training benchmark.

Its own ``main()`` runs: its dataset (torchvision transforms, CLIPImageProcessor), its ImageProjModel, IPAdapter and
attention processors (``ip_adapter/attention_processor.py``) in a diffusers UNet2DConditionModel, AutoencoderKL,
CLIPTextModel and CLIPVisionModelWithProjection, every model fp32, VAE latents, image embeddings and text embeddings
encoded every step, AdamW lr 1e-4, weight decay 0.01, accelerate. The models are random-weight, real-size SD1.5
and OpenCLIP ViT-H/14 models written once in the diffusers layout (fp32 files, so that they load in fp32).

None of its code is part of this repository: its files are extracted at run time (``git archive``) from a git copy
of github.com/tencent-ailab/IP-Adapter, a checkout or a bare clone given with ``--reference``, or else a shallow
clone made into the benchmark's temporary folder when the network allows.
"""
import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

URL = "https://github.com/tencent-ailab/IP-Adapter"
FILES = ("tutorial_train.py", "ip_adapter")


def _git(repo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=timeout, env=env)


def locate(given: str | None, root: Path) -> tuple[Path | None, str]:
    """(a git copy of the reference, how it was found) or (None, why there is none)."""
    if given:
        ok = Path(given).exists() and _git(Path(given), "cat-file", "-e", "HEAD:tutorial_train.py").returncode == 0
        return (Path(given), f"the copy at {given}") if ok else (None, f"{given} holds no tutorial_train.py")
    clone = root / "IP-Adapter.git"
    try:
        proc = subprocess.run(["git", "clone", "--quiet", "--bare", "--depth", "1", URL, str(clone)],
                              capture_output=True, timeout=180, env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"cloning {URL} failed ({e})"
    if proc.returncode != 0:
        return None, f"cloning {URL} failed ({proc.stderr.decode(errors='replace').strip()[-200:]})"
    return clone, f"a shallow clone of {URL}"


def extract(repo: Path, dest: Path) -> str:
    """tutorial_train.py and ip_adapter/ of the copy's HEAD into ``dest``; returns the commit."""
    archive = _git(repo, "archive", "--format=tar", "HEAD", *FILES, timeout=120)
    if archive.returncode != 0:
        raise RuntimeError(archive.stderr.decode(errors="replace"))
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return _git(repo, "rev-parse", "HEAD").stdout.decode().strip()


def write_models(folder: Path, tokenizer_dir: Path, seed: int = 0) -> None:
    """Random-weight SD1.5 (unet, vae, text_encoder, tokenizer, scheduler) and ViT-H/14 (image_encoder) folders,
    fp32, in the layout ``from_pretrained`` reads. One model in memory at a time."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)
    torch.manual_seed(seed)
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).save_pretrained(
        folder / "unet")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                  sample_size=512).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                 projection_dim=768)).save_pretrained(folder / "text_encoder")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                   num_attention_heads=16, image_size=224, patch_size=14,
                                                   projection_dim=1024, hidden_act="gelu")
                                  ).save_pretrained(folder / "image_encoder")
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  clip_sample=False, steps_offset=1).save_pretrained(folder / "scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)  # SD1.5's: one window
    tokenizer.save_pretrained(folder / "tokenizer")


def write_data(folder: Path, size: int, count: int) -> Path:
    """``count`` random size x size images and the reference's data file ([{"image_file", "text"}])."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        items.append({"image_file": f"{i}.png", "text": f"a photo number {i}"})
    (folder / "data.json").write_text(json.dumps(items))
    return folder / "data.json"


def _compat() -> None:
    """ip_adapter/ip_adapter.py imports MultiControlNetModel (used by its inference pipelines, not by training)
    from where diffusers before 0.33 kept it."""
    import diffusers.pipelines.controlnet as old
    if not hasattr(old, "MultiControlNetModel"):
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
        old.MultiControlNetModel = MultiControlNetModel


def train(code: Path, models: Path, data: Path, output: Path, size: int, batch: int, steps: int) -> dict:
    """The reference's main() for 1 + ``steps`` steps (one epoch of ``batch`` images each); the first is a warm-up.
    Speed from the step times it prints itself; peak = this process's max RSS."""
    sys.path.insert(0, str(code))
    _compat()
    import tutorial_train
    argv = ["tutorial_train.py", "--pretrained_model_name_or_path", str(models),
            "--image_encoder_path", str(models / "image_encoder"), "--data_json_file", str(data),
            "--data_root_path", str(data.parent), "--output_dir", str(output), "--resolution", str(size),
            "--train_batch_size", str(batch), "--num_train_epochs", str(steps + 1), "--mixed_precision", "no",
            "--dataloader_num_workers", "0", "--save_steps", str(10 ** 9)]
    printed = io.StringIO()
    saved, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(printed):
            tutorial_train.main()
    finally:
        sys.argv = saved
    times = [float(t) for t in re.findall(r", time: ([^,]+), step_loss", printed.getvalue())]
    if len(times) != steps + 1:
        raise RuntimeError(f"expected {steps + 1} steps from the reference trainer, it printed:\n"
                           f"{printed.getvalue()[-2000:]}")
    timed = times[1:]
    return {"samples_per_s": batch * len(timed) / sum(timed), "step_s": sum(timed) / len(timed),
            "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
