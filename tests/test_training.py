"""Training: tiny host models (the host's UNet class at tiny widths, seeded stand-in encoders), CPU.

What must hold: it learns; a SIGKILLed run resumes exactly; 2 processes equal 1 with the doubled batch; the file
it writes loads in LoadIPAdapter and in diffusers; drops follow the recipe; a crash mid-checkpoint leaves the
previous one usable; bad data is skipped and counted."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

from conftest import HOST, NO_HOST_REASON, REPO
from training_runs import (adapter_tensors, free_port, held_out_losses, logged_losses, max_diff, run_killed,
                           subprocess_env)

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
FACTORY = "training_models:tiny_sd15"
STEPS, SAVE_EVERY = 8, 2


def base_args(data, out, *extra):
    return ["--models-from", FACTORY, "--data", str(data), "--resolution", "64", "--batch-size", "4",
            "--learning-rate", "1e-3", "--num-workers", "0", "--output-dir", str(out), "--seed", "7",
            "--log-every", "1", *map(str, extra)]


def train(data, out, *extra):
    from ipadapter_suite.training.train import main
    return main(base_args(data, out, *extra))


@pytest.fixture(scope="module")
def tiny_data(host, tmp_path_factory):
    from training_models import write_dataset
    return write_dataset(tmp_path_factory.mktemp("data") / "train", 16, seed=0)


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory):
    """The uninterrupted run the resume tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    return train(tiny_data, out, "--max-steps", STEPS, "--save-every", SAVE_EVERY)


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
    from ipadapter_suite.training.checkpoint import resolve_resume
    out = tmp_path / "crashed"
    args = base_args(tiny_data, out, "--max-steps", STEPS, "--save-every", SAVE_EVERY)
    run_killed(tmp_path, "mid-write", 6, args)
    folder = out / "checkpoints"
    assert (folder / ".checkpoint-00000006.partial").is_dir()  # the crash left its half-written folder
    latest = resolve_resume("latest", folder)
    assert latest.name == "checkpoint-00000004"
    loaded = ext.host.files.load_adapter(str(latest / "ip-adapter_trained.safetensors"))
    assert loaded.spec.kind == "base"
    resumed = train(tiny_data, out, "--max-steps", STEPS, "--save-every", SAVE_EVERY, "--resume", "latest")
    assert max_diff(adapter_tensors(resumed), adapter_tensors(reference_run)) <= 1e-6
    assert not (folder / ".checkpoint-00000006.partial").exists()


def test_two_processes_equal_one_with_doubled_batch(tiny_data, tmp_path):
    """accelerate launch, 2 CPU processes (gloo) with batch 2 each == one process with batch 4 (mean loss).
    Without MPI, accelerate's ``--cpu --num_processes 2`` starts ONE process; its torchrun launcher with
    ACCELERATE_USE_CPU starts two, which the checkpoint's per-process RNG files prove."""
    # The paper's lr: Adam's first steps move every weight by ~lr whatever its gradient, so float-level
    # differences of near-zero gradients (batch 2 vs 4 kernels, gloo's average) show up at ~1e-2 * lr.
    common = ("--max-steps", 3, "--save-every", 100, "--learning-rate", "1e-4")
    single = train(tiny_data, tmp_path / "one", *common, "--batch-size", 4)
    initial = train(tiny_data, tmp_path / "init", "--max-steps", 0)
    args = base_args(tiny_data, tmp_path / "two", *common, "--batch-size", 2)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "training.train", *args]
    proc = subprocess.run(cmd, env=dict(subprocess_env(), ACCELERATE_USE_CPU="true"), cwd=str(REPO),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = tmp_path / "two" / "ip-adapter_trained.safetensors"
    last = adapter_tensors(tmp_path / "one" / "checkpoints" / "checkpoint-00000003" / "ip-adapter_trained.safetensors")
    assert (tmp_path / "two" / "checkpoints" / "checkpoint-00000003" / "random_states_1.pkl").is_file()
    assert max_diff(adapter_tensors(double), adapter_tensors(single)) <= 1e-5
    assert max_diff(last, adapter_tensors(single)) == 0.0  # the final checkpoint holds the exported adapter
    assert max_diff(adapter_tensors(initial), adapter_tensors(single)) > 1e-4  # training moved the weights


def test_export_loads_in_node_and_in_diffusers(tiny_data, tmp_path, ext):
    """The written file: LoadIPAdapter (the node) loads it and the patched model's output changes; diffusers'
    load_ip_adapter loads the same file and gives the same epsilon as the host."""
    import copy
    from types import SimpleNamespace

    from diffusers.loaders import IPAdapterMixin
    from parity_models import build_pair, diffusers_eps, host_eps
    path = train(tiny_data, tmp_path / "run", "--max-steps", 2, "--save-every", 100)
    metadata = safetensors.safe_open(str(path), "pt").metadata()
    assert json.loads(metadata["ipadapter_spec"])["kind"] == "base"

    import folder_paths
    folder_paths.add_model_folder_path("ipadapter", str(path.parent))
    node = ext.nodes.NODE_CLASS_MAPPINGS["LoadIPAdapter"]
    loaded = _execute(node, ipadapter_name=path.name)
    patcher, unet, info = build_pair("sd15", seed=0, context_dim=32)  # the same tiny UNet training used
    prompt = _tiny_prompt(ext)
    patched = ext.host.patching.apply_ip_adapter(patcher, loaded, prompt, 1.0, 0.0, 1.0)
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 8, 32, generator=g)
    eps = host_eps(patched, x, 1.7, [ctx])[0]
    plain = host_eps(patcher, x, 1.7, [ctx])[0]
    assert (eps - plain).abs().max() > 1e-3

    pipe = SimpleNamespace(unet=copy.deepcopy(unet))
    IPAdapterMixin.load_ip_adapter(pipe, str(path.parent), subfolder="", weight_name=path.name,
                                   image_encoder_folder=None)
    reference = diffusers_eps(pipe.unet.float(), patcher, x, 1.7, ctx, {"image_embeds": [prompt.embeds[None]]})
    assert ((eps - reference).abs().max() / reference.abs().max()).item() <= 1e-4


def _execute(node_cls, **inputs):
    """Run a node (V3 io.ComfyNode or classic) and return its first output."""
    if hasattr(node_cls, "execute") and hasattr(node_cls, "define_schema"):
        out = node_cls.execute(**inputs)
        return (out.result if hasattr(out, "result") else out)[0]
    return getattr(node_cls(), node_cls.FUNCTION)(**inputs)[0]


def _tiny_prompt(ext):
    from training_models import TinyEncoders
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    enc = TinyEncoders()
    embeds, hidden = enc.encode_image(pixels)
    return ext.ipadapter_core.with_default_uncond(embeds, hidden, enc.hidden_of_normalised(torch.zeros(1, 3, 32, 32)))


def test_drop_rates_and_draws_follow_the_recipe():
    """One draw per sample: 5 % image only, 5 % text only, 5 % both; timesteps uniform; a pure function of
    (seed, position)."""
    from ipadapter_suite.training.recipe import DropRates, draw
    n = 20000
    d = draw(3, range(n), (1, 1, 1), 1000, DropRates())
    image_only = (d.drop_image & ~d.drop_text).float().mean().item()
    text_only = (d.drop_text & ~d.drop_image).float().mean().item()
    both = (d.drop_image & d.drop_text).float().mean().item()
    sigma = (0.05 * 0.95 / n) ** 0.5
    for rate in (image_only, text_only, both):
        assert abs(rate - 0.05) < 5 * sigma, (image_only, text_only, both)
    assert d.timesteps.min() == 0 and d.timesteps.max() == 999
    assert abs(d.timesteps.float().mean().item() - 499.5) < 5 * 288.7 / n ** 0.5
    again = draw(3, [17, 5], (4, 2, 2), 1000, DropRates())
    one = draw(3, [5], (4, 2, 2), 1000, DropRates())
    assert torch.equal(again.noise[1], one.noise[0]) and again.timesteps[1] == one.timesteps[0]
    assert not torch.equal(draw(4, [5], (4, 2, 2), 1000, DropRates()).noise, one.noise)


@pytest.mark.parametrize("variant", ["base", "plus"])
def test_dropped_inputs_are_the_reference_uncond(tiny_data, variant):
    """A dropped image is a zero embedding (base) or the encoder's hidden states of the all-zero normalised pixel
    tensor (plus); a dropped caption is the empty prompt's embedding."""
    from collections import Counter
    from types import SimpleNamespace

    from ipadapter_suite.training.recipe import DropRates
    from ipadapter_suite.training.train import Run, model_inputs, unconditional_inputs
    from training_models import TinyEncoders, tiny_sd15
    frozen = tiny_sd15()
    args = SimpleNamespace(seed=0, resolution=64, cache=None)
    feature = "pooled" if variant == "base" else "hidden"
    pixels = torch.rand(3, 3, 64, 64)
    batch = {"pixels": pixels, "text": ["red", "green", "blue"], "position": torch.tensor([0, 1, 2]), "size": 3}
    for rates, image_dropped in ((DropRates(image=0.0, text=0.0, both=1.0), True),
                                 (DropRates(image=0.0, text=0.0, both=0.0), False)):
        run = Run(args, frozen, feature, *unconditional_inputs(args, frozen, False, feature), cached=False,
                  dataset_size=16, rates=rates, skipped=Counter())
        inputs = model_inputs(run, batch, torch.device("cpu"))
        real_pooled, real_hidden = frozen.encode_image(pixels)
        real_context, _ = frozen.encode_text(batch["text"])
        empty_context, _ = frozen.encode_text([""])
        if not image_dropped:
            assert torch.equal(inputs["features"], real_pooled if variant == "base" else real_hidden)
            assert torch.equal(inputs["context"], real_context)
            continue
        if variant == "base":
            assert torch.equal(inputs["features"], torch.zeros_like(real_pooled))
        else:
            grey = TinyEncoders().hidden_of_normalised(torch.zeros(1, 3, 32, 32))  # zero after normalisation
            assert torch.allclose(inputs["features"], grey.expand(3, -1, -1))
            mean_grey = TinyEncoders().mean.expand(1, 3, 64, 64)  # the mean-grey image encodes the same
            assert torch.allclose(frozen.encode_image(mean_grey)[1], grey, atol=1e-5)
        assert torch.equal(inputs["context"], empty_context.expand(3, -1, -1))


def _write_bad_samples(folder):
    """Next to good samples: an unreadable image, an image without caption, a caption without image."""
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "broken.txt").write_text("a picture")
    from PIL import Image
    Image.new("RGB", (70, 64), (10, 200, 30)).save(folder / "uncaptioned.png")
    (folder / "orphan.txt").write_text("no image here")


def test_bad_samples_are_skipped_and_counted(tmp_path, caplog):
    from training_models import write_dataset
    data = write_dataset(tmp_path / "data", 6, seed=2)
    _write_bad_samples(data)
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        path = train(data, out, "--max-steps", 4, "--save-every", 100)
    assert path.is_file()
    skipped = json.loads((out / "checkpoints" / "checkpoint-00000004" / "trainer_state.json").read_text())["skipped"]
    # 4 steps x 4 samples = 16 positions = 2 epochs of 8 records, 2 of them bad: each bad one seen twice
    assert skipped == {"unreadable image": 2, "missing caption": 2}
    assert any("skipped" in r.getMessage() and "unreadable image" in r.getMessage() for r in caplog.records)


def test_no_usable_data_is_a_clear_error(tmp_path):
    from ipadapter_suite.training.data import DataError
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no training samples"):
        train(empty, tmp_path / "a", "--max-steps", 2)
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_bad_samples(bad)
    with pytest.raises(DataError, match="no usable training sample"):
        train(bad, tmp_path / "b", "--max-steps", 50)


def test_tar_shards_stream_and_a_cut_shard_is_skipped(tmp_path):
    import io
    import tarfile

    from training_models import write_dataset
    source = write_dataset(tmp_path / "src", 8, seed=4)
    shards = tmp_path / "shards"
    shards.mkdir()
    for shard, names in enumerate((range(0, 4), range(4, 8))):
        with tarfile.open(shards / f"{shard:05d}.tar", "w") as tar:
            for i in names:
                for ext in ("png", "txt"):
                    tar.add(source / f"{i:04d}.{ext}", arcname=f"{i:04d}.{ext}")
    cut = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(cut[: len(cut) // 2 + 100])  # cut inside a member
    out = tmp_path / "run"
    path = train(f"{shards}/{{00000..00001}}.tar", out, "--max-steps", 3, "--save-every", 100)
    assert path.is_file()
    state = json.loads((out / "checkpoints" / "checkpoint-00000003" / "trainer_state.json").read_text())
    assert state["skipped"].get("shard cut short", 0) >= 1


def test_cached_training_equals_uncached(tiny_data, tmp_path):
    """The pre-encode pass stores what a step would compute (fp32 here): training from it gives the same adapter."""
    plain = train(tiny_data, tmp_path / "plain", "--max-steps", 3, "--save-every", 100)
    cache = tmp_path / "cache"
    cached = train(tiny_data, tmp_path / "cached", "--max-steps", 3, "--save-every", 100, "--cache", cache,
                   "--precache")
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["count"] == 16 and meta["feature"] == "pooled"
    assert max_diff(adapter_tensors(cached), adapter_tensors(plain)) <= 1e-6


def test_gradient_checkpointing_gives_the_same_gradients():
    from comfy.ldm.modules.attention import optimized_attention
    from ipadapter_suite.training.model import AdapterTraining, new_adapter, new_spec
    from training_models import tiny_sd15
    grads = []
    for checkpointing in (False, True):
        frozen = tiny_sd15()
        adapter = new_adapter(frozen, new_spec(frozen, "plus", 64), seed=0)
        module = AdapterTraining(adapter, frozen.base_model, optimized_attention, checkpointing)
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(2, 17, 64, generator=g)
        eps = module(hidden, torch.randn(2, 8, 32, generator=g), torch.randn(2, 4, 8, 8, generator=g),
                     torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 900]))
        eps.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_options_from_a_config_file(tmp_path):
    from ipadapter_suite.training.train import parse_args
    (tmp_path / "c.yaml").write_text("learning_rate: 3.0e-5\nvariant: plus\nbatch-size: 2\n")
    (tmp_path / "c.toml").write_text('learning_rate = 2e-5\nmixed_precision = "bf16"\n')
    args = parse_args(["--config", str(tmp_path / "c.yaml"), "--batch-size", "5"])
    assert (args.learning_rate, args.variant, args.batch_size, args.weight_decay) == (3e-5, "plus", 5, 0.01)
    args = parse_args(["--config", str(tmp_path / "c.toml")])
    assert (args.learning_rate, args.mixed_precision, args.drop_image) == (2e-5, "bf16", 0.05)
    shipped = parse_args(["--config", str(REPO / "training" / "example_config.yaml")])
    assert (shipped.variant, shipped.mixed_precision, shipped.precache) == ("base", "bf16", True)
    (tmp_path / "bad.yaml").write_text("learnin_rate: 1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "bad.yaml")])


def test_clip_scores_follow_the_paper(tmp_path, host):
    """CLIP-I = cos(generated, prompt image); CLIP-T = 2.5 * max(cos(generated, caption), 0) (CLIPScore); the
    open_clip model comes from a weights file by path (a tiny random one here)."""
    from ipadapter_suite.training.evaluate import image_embeddings, load_scorer, scores, text_embeddings
    from training_models import write_tiny_open_clip
    g, r, c = torch.tensor([[0.6, 0.8], [1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]])
    clip_i, clip_t = scores(g, r, c)
    assert clip_i == pytest.approx((0.8 + 0.0) / 2)
    assert clip_t == pytest.approx(0.0)  # both cosines with the caption are <= 0: clamped
    assert scores(g, r, -c)[1] == pytest.approx(2.5 * (0.6 + 1.0) / 2)

    _, weights = write_tiny_open_clip(tmp_path)
    model, preprocess, tokenizer = load_scorer("tiny-clip-test", str(weights))
    images = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    emb = image_embeddings(model, preprocess, images)
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert scores(emb[:1], emb[:1], text_embeddings(model, tokenizer, ["a cat"]))[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="clip-weights"):
        load_scorer("tiny-clip-test", str(tmp_path / "missing.bin"))


@pytest.mark.skipif(not os.environ.get("IPADAPTER_SLOW_TESTS"),
                    reason="real-size SD1.5 + ViT-H training run (~2 min on 2 CPU cores): set IPADAPTER_SLOW_TESTS=1")
def test_cli_on_real_size_files(model_files, tmp_path, ext):
    """``python -m training.train`` on a real-layout SD1.5 checkpoint and ViT-H file (random weights) at 64 px:
    the host's loaders, a validation image through the nodes, and a file LoadIPAdapter loads."""
    from training_models import write_dataset
    data = write_dataset(tmp_path / "data", 2, seed=3)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training.train", "--checkpoint", str(model_files["sd15"]),
           "--clip-vision", str(model_files["vit_h"]), "--data", str(data), "--resolution", "64",
           "--batch-size", "1", "--max-steps", "1", "--num-workers", "0", "--mixed-precision", "bf16",
           "--output-dir", str(out), "--validate-every", "1", "--validation-images", str(data / "0000.png"),
           "--validation-sampling-steps", "2"]
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=str(REPO), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "CLIP-I" in proc.stderr
    assert (out / "validation" / "step-00000001" / "00.png").is_file()
    loaded = ext.host.files.load_adapter(str(out / "ip-adapter_trained.safetensors"))
    assert (loaded.spec.kind, loaded.spec.family, loaded.spec.encoder_width) == ("base", "sd15", 1024)


@pytest.mark.skipif(not os.environ.get("IPADAPTER_SLOW_TESTS"),
                    reason="real-size SD1.5 + ViT-H loading (~1 min on 2 CPU cores): set IPADAPTER_SLOW_TESTS=1")
def test_load_frozen_keeps_no_copies(model_files):
    """``load_frozen`` (bf16) on the real-size files, in a process of its own: no autograd graph kept (the image
    encoder's cached output for the zero image once held every fp32 weight cast, 6 GiB for ViT-H), the VAE stored in
    bf16, and the resident size after loading within 0.75 GiB of the frozen weights' bytes."""
    script = textwrap.dedent(f"""
        import json
        import torch
        from conftest import import_host
        import_host()
        from ipadapter_suite.training.frozen import load_frozen

        def resident(field):
            return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                        if line.startswith(field + ":"))

        before = resident("VmRSS")
        frozen = load_frozen({str(model_files["sd15"])!r}, {str(model_files["vit_h"])!r}, torch.bfloat16)
        after, peak = resident("VmRSS"), resident("VmHWM")
        models = (frozen.base_model, frozen.vae.first_stage_model, frozen.clip.cond_stage_model,
                  frozen.clip_vision.model)
        weights = sum(t.numel() * t.element_size() for m in models for t in [*m.parameters(), *m.buffers()])
        pixels = torch.rand(1, 3, 64, 64)
        outputs = (frozen.zero_image_hidden, *frozen.encode_image(pixels), frozen.encode_latents(pixels),
                   frozen.encode_text(["a photo"])[0])
        print(json.dumps(dict(before=before, after=after, peak=peak, weights=weights,
                              vae=str(next(frozen.vae.first_stage_model.parameters()).dtype),
                              graph=any(t.requires_grad for t in outputs))))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), cwd=str(REPO), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["vae"] == "torch.bfloat16"
    assert not r["graph"]
    assert r["after"] - r["before"] <= r["weights"] + 0.75 * 2**30, r
    assert r["peak"] - r["before"] <= 1.5 * r["weights"], r
