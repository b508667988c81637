"""Training, the hard cases: loader workers, streams of bad data, empty micro-batches, mixed precision, SDXL and
the evaluation command, on the tiny host models (CPU, 64 px).

What must hold: N loader workers give the batches (and the adapter) of one, for folders and tar shards, and a
SIGKILLed run resumes exactly with the default workers; a shard set with nothing usable stops with a clear error; a
step whose samples were all skipped leaves the adapter and AdamW's state as they were, on one process or two; a
fresh adapter copies the checkpoint's own fp32 Wk, Wv under bf16; SDXL trains, resumes and exports; ``python -m
training.evaluate`` reports the paper's CLIP-I / CLIP-T of the images it saved."""
import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from itertools import islice

import pytest
import safetensors.torch
import torch

from conftest import HOST, NO_HOST_REASON, REPO
from training_runs import (adapter_tensors, free_port, held_out_losses, logged_losses, max_diff, run_killed,
                           subprocess_env)

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
SD15, SDXL = "training_models:tiny_sd15", "training_models:tiny_sdxl"
STEPS, SAVE_EVERY = 6, 3
SHARD_SIZES = (7, 5, 4)  # samples per shard: batches of 4 straddle shards, a pass is 16 samples
BAD_KEYS = {3: "unreadable image", 9: "missing caption"}


def base_args(data, out, *extra, models=SD15):
    """No --num-workers: the default (2 loader workers) is what runs."""
    return ["--models-from", models, "--data", str(data), "--resolution", "64", "--batch-size", "4",
            "--learning-rate", "1e-3", "--output-dir", str(out), "--seed", "7", "--log-every", "1",
            *map(str, extra)]


def train(data, out, *extra, models=SD15):
    from ipadapter_suite.training.train import main
    return main(base_args(data, out, *extra, models=models))


def state_of(out, step):
    return json.loads((out / "checkpoints" / f"checkpoint-{step:08d}" / "trainer_state.json").read_text())


def write_shards(folder, source, sizes=SHARD_SIZES, bad=BAD_KEYS):
    """Tar shards of source's NNNN.png + NNNN.txt samples, in order, ``sizes`` samples each; a key in ``bad``
    gets an image that does not decode ("unreadable image") or loses its caption ("missing caption")."""
    folder.mkdir(parents=True, exist_ok=True)
    first = 0
    for shard, size in enumerate(sizes):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for key in range(first, first + size):
                _add_sample(tar, source, key, bad.get(key))
        first += size
    return f"{folder}/{{00000..{len(sizes) - 1:05d}}}.tar"


def _add_sample(tar, source, key, bad):
    image = (source / f"{key:04d}.png").read_bytes() if bad != "unreadable image" else b"\x89PNG\r\n\x1a\n not a png"
    members = [("png", image)]
    if bad != "missing caption":
        members.append(("txt", (source / f"{key:04d}.txt").read_bytes()))
    for ext, data in members:
        info = tarfile.TarInfo(f"{key:04d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def captioned_dataset(folder, count, seed):
    """write_dataset with a caption of its own for every image ("picture N")."""
    from training_models import write_dataset
    write_dataset(folder, count, seed=seed)
    for i in range(count):
        (folder / f"{i:04d}.txt").write_text(f"picture {i}")
    return folder


@pytest.fixture(scope="module")
def datasets(host, tmp_path_factory):
    """folder: 16 images and 2 bad files; shards: 16 samples in shards of 7, 5 and 4, 2 of them bad."""
    root = tmp_path_factory.mktemp("hardening-data")
    folder = captioned_dataset(root / "folder", 16, seed=0)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "broken.txt").write_text("a picture")
    (root / "folder" / "uncaptioned.png").write_bytes((folder / "0000.png").read_bytes())
    source = captioned_dataset(root / "source", 16, seed=1)
    return {"folder": folder, "shards": write_shards(root / "shards", source), "shard_source": source}


@pytest.fixture(scope="module")
def reference_runs(datasets, tmp_path_factory):
    """The uninterrupted run with the default loader workers, once per kind of data."""
    runs = {}

    def run(kind):
        if kind not in runs:
            out = tmp_path_factory.mktemp(f"reference-{kind}")
            runs[kind] = train(datasets[kind], out, "--max-steps", STEPS, "--save-every", SAVE_EVERY)
        return runs[kind]
    return run


def expected_stream(shards, seed, epochs):
    """The stream written out from the tar files: per epoch, the shards in the epoch's order (the seeded
    permutation of docs/training.md), each one's samples in file order, as ("ok", caption) or ("bad", reason)."""
    from ipadapter_suite.training.recipe import epoch_permutation
    folder = shards.rsplit("/", 1)[0]
    files = [f"{folder}/{i:05d}.tar" for i in range(len(SHARD_SIZES))]
    return [item for epoch in range(epochs) for shard in epoch_permutation(seed, epoch, len(files)).tolist()
            for item in _shard_items(files[shard])]


def _shard_items(path):
    with tarfile.open(path) as tar:
        keys = sorted({name.rsplit(".", 1)[0] for name in tar.getnames()})
        return [("bad", BAD_KEYS[int(key)]) if int(key) in BAD_KEYS
                else ("ok", tar.extractfile(f"{key}.txt").read().decode()) for key in keys]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a 2-core machine
@pytest.mark.parametrize("world, rank, first", [(1, 0, 0), (2, 1, 3)])
def test_stream_batches_do_not_depend_on_loader_workers(datasets, world, rank, first):
    """Each micro-batch holds the global positions [m*b*W + r*b, +b) of the whole stream, whatever the number of
    loader workers, from the resume point on; the pass size comes with micro-steps past the first pass."""
    from ipadapter_suite.training.data import DecodedShards, ShardStream, keep_batch
    from ipadapter_suite.training.train import _shard_list
    b, count = 4, 6
    stream = expected_stream(datasets["shards"], seed=7, epochs=6)
    expected = []
    for m in range(first, first + count):
        positions = range(m * b * world + rank * b, m * b * world + (rank + 1) * b)
        good = [p for p in positions if stream[p][0] == "ok"]
        skipped = Counter(stream[p][1] for p in positions if stream[p][0] == "bad")
        expected.append((good, [stream[p][1] for p in good], skipped, 16 if m * b * world >= 16 else 0))
    for workers in (0, 1, 2, 3):
        shards = ShardStream(_shard_list(datasets["shards"]), 64, 7, b, rank, world, first_micro_step=first)
        loader = torch.utils.data.DataLoader(DecodedShards(shards), batch_size=None, collate_fn=keep_batch,
                                             num_workers=workers)
        got = [(batch["position"].tolist() if batch["size"] else [], batch.get("text", []), batch["skipped"],
                batch["pass_size"]) for batch in islice(loader, count)]
        assert got == expected, workers


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_one_loader_worker_equals_two(datasets, reference_runs, tmp_path, kind):
    one = train(datasets[kind], tmp_path / "one", "--max-steps", STEPS, "--save-every", 100, "--num-workers", 1)
    assert max_diff(adapter_tensors(one), adapter_tensors(reference_runs(kind))) <= 1e-6
    initial = train(datasets[kind], tmp_path / "init", "--max-steps", 0)
    assert max_diff(adapter_tensors(initial), adapter_tensors(one)) > 1e-4  # training moved the weights


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_resume_after_sigkill_with_loader_workers_is_exact(datasets, reference_runs, tmp_path, kind):
    out = tmp_path / "killed"
    run_killed(tmp_path, "after-save", SAVE_EVERY,
               base_args(datasets[kind], out, "--max-steps", STEPS, "--save-every", SAVE_EVERY))
    assert not (out / "ip-adapter_trained.safetensors").exists()
    resumed = train(datasets[kind], out, "--max-steps", STEPS, "--save-every", SAVE_EVERY, "--resume", "latest")
    assert state_of(out, STEPS)["step"] == STEPS
    assert max_diff(adapter_tensors(resumed), adapter_tensors(reference_runs(kind))) <= 1e-6
    assert state_of(out, STEPS)["skipped"] == state_of(reference_runs(kind).parent, STEPS)["skipped"]


def test_shards_with_nothing_usable_stop_with_a_clear_error(datasets, tmp_path):
    from ipadapter_suite.training.data import DataError
    source = datasets["shard_source"]
    bad = write_shards(tmp_path / "bad", source, sizes=(3, 2),
                       bad={0: "unreadable image", 1: "missing caption", 2: "unreadable image",
                            3: "missing caption", 4: "unreadable image"})
    cut = tmp_path / "bad" / "00001.tar"
    cut.write_bytes(cut.read_bytes()[:700])  # inside the second sample: the shard is cut short
    with pytest.raises(DataError, match="no usable training sample"):
        train(bad, tmp_path / "run", "--max-steps", 50)
    assert not (tmp_path / "run" / "ip-adapter_trained.safetensors").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    for i in range(2):
        tarfile.open(empty / f"{i:05d}.tar", "w").close()
    with pytest.raises(DataError, match="hold no samples"):
        train(f"{empty}/{{00000..00001}}.tar", tmp_path / "run2", "--max-steps", 50)


def _table_with_bad_positions(folder, count, bad_positions, seed=7):
    """A .jsonl of ``count`` images where the records read at ``bad_positions`` in the first epoch (the seeded
    permutation) point at a missing file."""
    from ipadapter_suite.training.recipe import epoch_permutation
    captioned_dataset(folder, count, seed=3)
    order = epoch_permutation(seed, 0, count).tolist()
    bad = {order[p] for p in bad_positions}
    rows = [{"image": "missing.png" if i in bad else f"{i:04d}.png", "text": f"picture {i}"} for i in range(count)]
    table = folder / "pairs.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return table


def _optimizer_state(out, step):
    state = torch.load(out / "checkpoints" / f"checkpoint-{step:08d}" / "optimizer.bin", weights_only=False)
    return {f"{k}.{name}": v for k, s in state["state"].items() for name, v in s.items()}


def test_a_step_of_bad_samples_leaves_adapter_and_optimizer_unchanged(tmp_path, host, caplog):
    """Step 2 (positions 4..7) has only unreadable samples: checkpoint 2 holds checkpoint 1's adapter and AdamW
    state bit for bit, the step is counted and said; step 3 trains again."""
    table = _table_with_bad_positions(tmp_path / "data", 12, range(4, 8))
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        train(table, out, "--max-steps", 3, "--save-every", 1)
    adapters = {step: adapter_tensors(out / "checkpoints" / f"checkpoint-{step:08d}" / "ip-adapter_trained.safetensors")
                for step in (1, 2, 3)}
    optimizers = {step: _optimizer_state(out, step) for step in (1, 2, 3)}
    assert max_diff(adapters[1], adapters[2]) == 0.0
    assert optimizers[1].keys() == optimizers[2].keys() and optimizers[1]
    assert all(torch.equal(torch.as_tensor(optimizers[1][k]), torch.as_tensor(optimizers[2][k])) for k in optimizers[1])
    assert max_diff(adapters[2], adapters[3]) > 0.0
    assert (state_of(out, 2)["empty_steps"], state_of(out, 3)["empty_steps"]) == (1, 1)
    assert state_of(out, 3)["skipped"] == {"unreadable image": 4}
    assert any("optimizer step skipped" in r.getMessage() for r in caplog.records)


def test_two_processes_with_an_empty_part_equal_one_process(tmp_path, host):
    """Batch 2 on each of 2 processes against batch 4 on one. Micro-step 1: process 0's part (positions 4, 5)
    is all bad, process 1's is not: process 0 still meets process 1 in the gradient all-reduce, and the step is
    the mean over the 2 usable samples. Micro-step 2 (positions 8..11) is bad everywhere: no optimizer step."""
    table = _table_with_bad_positions(tmp_path / "data", 16, [4, 5, 8, 9, 10, 11])
    common = ("--max-steps", 4, "--save-every", 100, "--learning-rate", "1e-4", "--num-workers", 0)
    single = train(table, tmp_path / "one", *common)
    args = base_args(table, tmp_path / "two", *common, "--batch-size", 2)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "training.train", *args]
    proc = subprocess.run(cmd, env=dict(subprocess_env(), ACCELERATE_USE_CPU="true"), cwd=str(REPO),
                          capture_output=True, text=True, timeout=180)  # a process left out of the all-reduce hangs
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    assert len(one) == 3 and two == pytest.approx(one, rel=1e-5)  # step 2 is the mean over its 2 usable samples
    assert state_of(tmp_path / "two", 4)["empty_steps"] == state_of(tmp_path / "one", 4)["empty_steps"] == 1
    # Adam moves a weight by ~lr whatever the size of its gradient: float-level differences (batch 2 vs 4
    # kernels, gloo's average) of a few near-zero gradients show up at up to ~lr. A step weighted wrongly moves
    # nearly every weight differently.
    a, b = adapter_tensors(tmp_path / "two" / "ip-adapter_trained.safetensors"), adapter_tensors(single)
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diff.max() <= 1e-4 and (diff > 1e-6).float().mean() < 1e-3, (diff.max(), (diff > 1e-6).sum())


def test_fresh_adapter_copies_the_checkpoint_precision_under_bf16(datasets, tmp_path):
    """--mixed-precision bf16 stores the UNet in bf16, but W'k, W'v start as the fp32 Wk, Wv (lr 0: the bf16
    training step leaves them as they were)."""
    from ipadapter_suite.host.unet import cross_attention_layers
    from ipadapter_suite.ipadapter_core import LAYOUTS
    from training_models import tiny_sd15
    out = tmp_path / "run"  # a process of its own: accelerate's precision is fixed once per process
    cmd = [sys.executable, "-m", "training.train", *base_args(datasets["folder"], out, "--max-steps", 1,
                                                              "--mixed-precision", "bf16", "--learning-rate", 0,
                                                              "--weight-decay", 0)]
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tensors = adapter_tensors(out / "ip-adapter_trained.safetensors")
    layers = cross_attention_layers(tiny_sd15().patcher)
    for site in LAYOUTS["sd15"]:
        for name in ("to_k", "to_v"):
            full = getattr(layers[site.key], name).weight
            trained = tensors[f"ip_adapter.{site.n}.{name}_ip.weight"]
            assert full.dtype == torch.float32 and torch.equal(trained, full), (site.n, name)
            assert not torch.equal(full.to(torch.bfloat16).float(), full)  # the bf16 copy would differ


SDXL_STEPS = 12


@pytest.fixture(scope="module")
def sdxl_run(datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl")
    path = train(datasets["folder"], out, "--max-steps", SDXL_STEPS, "--save-every", 100, "--learning-rate", "3e-3",
                 models=SDXL)
    return out, path


def test_sdxl_learns(sdxl_run, tmp_path):
    """The tiny SDXL-layout UNet (pooled text, size conditioning y): held-out loss at lambda = 1 below lambda = 0,
    and the logged loss went down."""
    from training_models import tiny_sdxl
    out, path = sdxl_run
    held_out = captioned_dataset(tmp_path / "held_out", 8, seed=123)
    with_adapter, without = held_out_losses(tiny_sdxl(), path, held_out)
    assert with_adapter < 0.9 * without, (with_adapter, without)
    losses = logged_losses(out)
    assert len(losses) == SDXL_STEPS
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses


def test_sdxl_resume_after_sigkill_is_exact(datasets, tmp_path):
    args = ("--max-steps", 4, "--save-every", 2)
    reference = train(datasets["folder"], tmp_path / "reference", *args, models=SDXL)
    out = tmp_path / "killed"
    run_killed(tmp_path, "after-save", 2, base_args(datasets["folder"], out, *args, models=SDXL))
    resumed = train(datasets["folder"], out, *args, "--resume", "latest", models=SDXL)
    assert state_of(out, 4)["step"] == 4
    assert max_diff(adapter_tensors(resumed), adapter_tensors(reference)) <= 1e-6


def test_sdxl_export_loads_in_the_node_and_changes_the_output(sdxl_run, ext):
    """LoadIPAdapter's loader reads the SDXL file; sampling the patched tiny SDXL model (KSampler's path, with
    pooled text) gives another latent than the plain model."""
    from ipadapter_suite.host.loaders import sample
    from training_models import TinyEncoders, tiny_sdxl
    loaded = ext.host.files.load_adapter(str(sdxl_run[1]))
    assert (loaded.spec.family, loaded.spec.kind) == ("sdxl", "base")
    frozen, enc = tiny_sdxl(), TinyEncoders()
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    embeds, hidden = enc.encode_image(pixels)
    prompt = ext.ipadapter_core.with_default_uncond(embeds, hidden, frozen.zero_image_hidden)
    patched = ext.host.patching.apply_ip_adapter(frozen.patcher, loaded, prompt, 1.0, 0.0, 1.0)
    context, pooled = enc.encode_text_pooled(["a picture"])
    empty, empty_pooled = enc.encode_text_pooled([""])
    positive, negative = [[context, {"pooled_output": pooled}]], [[empty, {"pooled_output": empty_pooled}]]
    latent = torch.zeros(1, 4, 8, 8)
    plain = sample(frozen.patcher, latent, 3, 2, 5.0, positive, negative)
    with_adapter = sample(patched, latent, 3, 2, 5.0, positive, negative)
    assert torch.isfinite(with_adapter).all()
    assert (with_adapter - plain).abs().max() > 1e-3


def test_evaluate_cli_reports_the_paper_scores(tmp_path, host):
    """``python -m training.evaluate`` with tiny models (--models-from) and a tiny open_clip config: its
    scores.json equals CLIP-I = cos(generated, prompt image) and CLIP-T = 2.5 * max(cos(generated, caption), 0),
    computed here on the images it saved, averaged per prompt and then over prompts."""
    import open_clip
    from PIL import Image

    from ipadapter_suite.training.checkpoint import export_adapter
    from ipadapter_suite.training.model import new_adapter, new_spec
    from training_models import tiny_sd15_host, write_tiny_open_clip
    data = captioned_dataset(tmp_path / "data", 3, seed=5)
    (data / "0001.txt").write_text("a red square on a blue field")
    (data / "uncaptioned.png").write_bytes((data / "0000.png").read_bytes())
    frozen = tiny_sd15_host()
    adapter_path = tmp_path / "ip-adapter_tiny.safetensors"
    export_adapter(new_adapter(frozen, new_spec(frozen, "base"), seed=0), adapter_path)
    config, weights = write_tiny_open_clip(tmp_path)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "training.evaluate", "--models-from", "training_models:tiny_sd15_host",
           "--adapter", str(adapter_path), "--data", str(data), "--clip-model", str(config),
           "--clip-weights", str(weights), "--images-per-prompt", "2", "--resolution", "64", "--steps", "2",
           "--output-dir", str(out)]
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reported = json.loads((out / "scores.json").read_text())
    assert (reported["count"], reported["skipped"]) == (3, 1)

    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test", pretrained=str(weights))
    tokenizer = open_clip.get_tokenizer("tiny-clip-test")

    def embed_images(paths):
        with torch.no_grad():
            x = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths]))
        return x / x.norm(dim=-1, keepdim=True)

    per_prompt_i, per_prompt_t = [], []
    for n in range(3):
        made = embed_images([out / f"{n:05d}_{k}.png" for k in range(2)])  # (2, D)
        reference = embed_images([data / f"{n:04d}.png"])  # (1, D): the 64 px prompt image as it was read
        with torch.no_grad():
            caption = model.encode_text(tokenizer([(data / f"{n:04d}.txt").read_text()]))
        caption = caption / caption.norm(dim=-1, keepdim=True)
        per_prompt_i.append(sum((made[k] @ reference[0]).item() for k in range(2)) / 2)
        per_prompt_t.append(sum(2.5 * max((made[k] @ caption[0]).item(), 0.0) for k in range(2)) / 2)
    assert reported["clip_i"] == pytest.approx(sum(per_prompt_i) / 3, abs=1e-5)
    assert reported["clip_t"] == pytest.approx(sum(per_prompt_t) / 3, abs=1e-5)
