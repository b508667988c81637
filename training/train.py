"""Train an IP-Adapter on the host's own models: ``python -m training.train --help``.

Shape of the script (accelerate's examples): get_dataloaders / build / train_step / save / main. Every random draw
of a sample is a function of (seed, its global position), and the data position follows from the step, so a run
resumed from a checkpoint, run on more processes with the same global batch, or with any number of loader workers,
trains the same adapter.
"""

if __name__ == "__main__":  # `python -m training.train` from the repository: the package's own copy runs
    import launch
    raise SystemExit(launch.run_module("training.train"))

import argparse
import importlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import cache as cache_mod
from .checkpoint import adapter_filename, export_adapter, read_state, resolve_resume, save_checkpoint
from .data import (DataError, DecodedShards, PositionBatches, PositionDataset, ShardStream, collate, is_sharded,
                   keep_batch, records_for)
from .objective import UnsupportedModel, describe
from .objective import target as training_target
from .options import apply_config_file
from .recipe import DropRates, draw, uncond_image_features, where_rows

log = logging.getLogger("training")
DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML or TOML file of option values (command-line options win)")
    g = p.add_argument_group("models")
    g.add_argument("--checkpoint", help="SD1.5 or SDXL single-file checkpoint (models/checkpoints)")
    g.add_argument("--clip-vision", help="CLIP vision file (models/clip_vision), e.g. OpenCLIP ViT-H/14")
    g.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, ~/ComfyUI, or ../.. of this repo)")
    g.add_argument("--models-from", help="MODULE:FUNCTION returning a training.frozen.FrozenModels instead of "
                                         "--checkpoint/--clip-vision (custom hosts, tests)")
    g.add_argument("--variant", choices=("base", "plus"), default="base",
                   help="base: 4 tokens from the pooled embedding; plus: resampler, 16 tokens from hidden states")
    g.add_argument("--resampler-dim", type=int, help="plus only; default 768 (SD1.5) / 1280 (SDXL)")
    g.add_argument("--init-adapter", help="start from this adapter file (fine-tuning) instead of a fresh one")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="folder of images + same-name .txt captions, a .jsonl/.csv of {image, text}, "
                                  "or tar shards ('shards/{00000..00099}.tar' or a glob)")
    g.add_argument("--cache", help="folder of pre-encoded samples; read from it when it is complete")
    g.add_argument("--precache", action="store_true", help="encode --data into --cache first (VAE latents, "
                                                           "image features, text embeddings), then train from it")
    g.add_argument("--resolution", type=int, default=512, help="shorter side resize, then centre crop")
    g.add_argument("--num-workers", type=int, default=2, help="data loader processes per training process")
    g = p.add_argument_group("optimisation (the paper's defaults)")
    g.add_argument("--batch-size", type=int, default=8, help="per process")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1)
    g.add_argument("--max-steps", type=int, default=100_000, help="optimizer steps")
    g.add_argument("--learning-rate", type=float, default=1e-4)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--max-grad-norm", type=float, default=0.0, help="0: no clipping (the paper)")
    g.add_argument("--drop-image", type=float, default=0.05, help="probability of dropping only the image")
    g.add_argument("--drop-text", type=float, default=0.05, help="probability of dropping only the caption")
    g.add_argument("--drop-both", type=float, default=0.05, help="probability of dropping both")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--mixed-precision", choices=tuple(DTYPES), default="no",
                   help="bf16/fp16: the frozen models are stored in that dtype, the adapter stays fp32")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet transformer activations")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default="ipadapter-training")
    g.add_argument("--name", default="trained", help="the adapter is written as ip-adapter_<name>.safetensors")
    g.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps (and at the end)")
    g.add_argument("--checkpoints-keep", type=int, default=3, help="newest checkpoints kept (0: all)")
    g.add_argument("--resume", help="'latest' or a checkpoint folder: optimizer, step, RNG and data position")
    g.add_argument("--log-every", type=int, default=10, help="steps between tensorboard scalars")
    g.add_argument("--validate-every", type=int, default=0, help="steps between validation images (0: never)")
    g.add_argument("--validation-images", nargs="*", default=[], help="image prompts for validation")
    g.add_argument("--validation-sampling-steps", type=int, default=30)
    g.add_argument("--validation-cfg", type=float, default=7.5)
    return apply_config_file(p, argv)


@dataclass
class Run:
    """What the loop needs besides the model: the frozen models, the unconditional inputs and the counters."""
    args: argparse.Namespace
    frozen: object
    feature: str
    empty_context: torch.Tensor
    empty_pooled: torch.Tensor | None
    uncond_features: torch.Tensor | None
    cached: bool
    dataset_size: int
    rates: DropRates
    skipped: Counter
    rank: int = 0  # this process and the process count, from the accelerator
    world: int = 1
    bad_run: int = 0  # samples skipped in a row, over every process
    empty_steps: int = 0  # steps with no usable sample on any process: the optimizer was not stepped


def load_models(args):
    """The frozen models: from a factory (``--models-from``) or the host's loaders. Training from a complete
    cache without validation loads the UNet only."""
    from .frozen import from_factory, load_frozen
    if args.models_from:
        return from_factory(args.models_from)
    if not args.checkpoint:
        raise SystemExit("give --checkpoint and --clip-vision (or --models-from)")
    from ..host.locate import import_host
    import_host(args.comfyui)
    dtype, cache = DTYPES[args.mixed_precision], Path(args.cache) if args.cache else None
    if cache and (cache / cache_mod.META).is_file() and not args.validate_every:
        frozen = load_frozen(args.checkpoint, None, dtype, encoders=False)
        return frozen.with_cache_widths(cache_mod.load_meta(cache)["embed_width"], cache_mod.zero_image_hidden(cache))
    if not args.clip_vision:
        raise SystemExit("give --clip-vision (the CLIP vision file the adapter will read)")
    return load_frozen(args.checkpoint, args.clip_vision, dtype)


def build(args, frozen):
    """The trainable module (adapter inside the host UNet through the nodes' patch) and its optimizer."""
    from ..host.unet import ATTENTION
    from .model import AdapterTraining, adapter_from_file, new_adapter, new_spec
    if args.init_adapter:
        adapter = adapter_from_file(args.init_adapter, frozen)
    else:
        adapter = new_adapter(frozen, new_spec(frozen, args.variant, args.resampler_dim), args.seed)
    module = AdapterTraining(adapter, frozen.base_model, ATTENTION, args.gradient_checkpointing)
    optimizer = torch.optim.AdamW(module.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    log.info("training a %s: %.1fM parameters", adapter.spec.describe,
             sum(p.numel() for p in adapter.parameters()) / 1e6)
    return module, optimizer


def get_dataloaders(args, accelerator, first_micro_step: int):
    """-> (loader, dataset size or 0 for streams, cached?). Both kinds are read by global position: micro-step m
    is the positions [m*b*W, (m+1)*b*W), this process's slice of b, whatever the loader workers."""
    rank, world = accelerator.process_index, accelerator.num_processes
    micro_steps = args.max_steps * args.gradient_accumulation_steps
    if args.cache and (Path(args.cache) / cache_mod.META).is_file():
        dataset = PositionDataset(cache_mod.cached_records(Path(args.cache)), args.resolution, args.seed,
                                  read=cache_mod.read_cached)
        cached = True
    elif args.data and is_sharded(args.data):
        stream = ShardStream(_shard_list(args.data), args.resolution, args.seed, args.batch_size, rank, world,
                             first_micro_step)
        loader = torch.utils.data.DataLoader(DecodedShards(stream), batch_size=None, collate_fn=keep_batch,
                                             num_workers=args.num_workers)
        return loader, 0, False
    elif args.data:
        dataset, cached = PositionDataset(records_for(args.data), args.resolution, args.seed), False
    else:
        raise SystemExit("give --data (or a finished --cache)")
    sampler = PositionBatches(args.batch_size, rank, world, first_micro_step, micro_steps)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=args.num_workers, persistent_workers=False)
    return loader, len(dataset), cached


def _shard_list(pattern: str) -> list[str]:
    import glob
    import re
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match:
        first, last = match[1], match[2]
        names = [pattern.replace(match[0], str(i).zfill(len(first))) for i in range(int(first), int(last) + 1)]
        return [n for n in names if Path(n).exists()] or names
    return sorted(glob.glob(pattern)) or [pattern]


@torch.no_grad()
def model_inputs(run: Run, batch: dict, device) -> dict:
    """A collated batch -> the AdapterTraining inputs, with the recipe's drops applied."""
    frozen = run.frozen
    if run.cached:
        latents, features, context = batch["latents"].float(), batch["features"].float(), batch["context"].float()
        pooled = batch.get("pooled")
    else:
        encoded = cache_mod.encode_samples(frozen, [{"pixels": p, "text": t} for p, t in
                                                    zip(batch["pixels"], batch["text"])], run.feature, torch.float32)
        latents, features, context, pooled = (encoded["latents"], encoded["features"], encoded["context"],
                                               encoded.get("pooled"))
    sampling = frozen.base_model.model_sampling
    draws = draw(run.args.seed, batch["position"].tolist(), latents.shape[1:], len(sampling.sigmas), run.rates)
    uncond = uncond_image_features(run.feature, features, run.uncond_features)
    features = where_rows(draws.drop_image, uncond, features)
    context = where_rows(draws.drop_text, run.empty_context, context)
    if pooled is not None:
        pooled = where_rows(draws.drop_text, run.empty_pooled, pooled.float())
    inputs = dict(features=features, context=context, latents=latents, noise=draws.noise,
                  timesteps=draws.timesteps, y=size_conditioning(run, pooled),
                  target=training_target(sampling, latents, draws.noise, draws.timesteps))  # noise or v
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def size_conditioning(run: Run, pooled: torch.Tensor | None) -> torch.Tensor | None:
    """SDXL's ``y`` (B, adm): the pooled text and the size embeddings of the training square; None for SD1.5."""
    base = run.frozen.base_model
    if pooled is None or not getattr(base, "adm_channels", 0):
        return None
    size = run.args.resolution
    return base.encode_adm(pooled_output=pooled, width=size, height=size, crop_w=0, crop_h=0, target_width=size,
                           target_height=size)


@torch.no_grad()
def placeholder_inputs(run: Run, device) -> dict:
    """One unconditional row at the smallest latent size (zero latents and noise, t = 0): the forward pass of a
    process whose part of the micro-batch is empty, so that it meets the others in DDP's gradient all-reduce (a
    backward without a forward does not); its loss is weighted 0."""
    frozen = run.frozen
    features = uncond_image_features(run.feature, torch.zeros(1, frozen.embed_width), run.uncond_features)
    latents = torch.zeros(1, frozen.base_model.diffusion_model.in_channels, 8, 8)  # (1, C, 8, 8)
    timesteps = torch.zeros(1, dtype=torch.long)
    inputs = dict(features=features, context=run.empty_context, latents=latents, noise=torch.zeros_like(latents),
                  timesteps=timesteps, y=size_conditioning(run, run.empty_pooled),
                  target=training_target(frozen.base_model.model_sampling, latents, torch.zeros_like(latents),
                                         timesteps))
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def micro_batch_inputs(run: Run, batch: dict, usable: int, device) -> tuple[dict | None, float]:
    """-> (inputs, loss weight) of this process's part of a micro-batch with ``usable`` samples over every
    process. The weight makes the summed per-sample losses this process's share of the global mean (DDP
    averages over the W processes). An empty part: no inputs on one process, placeholder inputs (weight 0) on
    several."""
    if batch["size"]:
        return model_inputs(run, batch, device), run.world / usable
    return (placeholder_inputs(run, device) if run.world > 1 else None), 0.0


def train_step(accelerator, module, optimizer, inputs: dict | None, weight: float, max_grad_norm: float,
               take_step: bool = True) -> torch.Tensor | None:
    """One micro-batch: the MSE of the UNet's output against ``inputs["target"]`` (the noise for eps models, v for
    v-prediction; per sample, summed, times ``weight``), backward, and on the last micro-batch of a step the
    optimizer step, unless ``take_step`` is false: a step with no usable sample on any process leaves the adapter
    and AdamW's state as they are (a zero-gradient step would still move the weights through momentum and weight
    decay). ``inputs`` None: nothing to compute on this process."""
    loss = None
    with accelerator.accumulate(module):
        if inputs is not None:
            output = module(**{k: v for k, v in inputs.items() if k != "target"})  # (B, C, h, w)
            per_sample = F.mse_loss(output, inputs["target"].float(), reduction="none").flatten(1).mean(1)  # (B,)
            loss = per_sample.sum() * weight
            accelerator.backward(loss)
        if accelerator.sync_gradients and take_step:
            if max_grad_norm > 0:
                accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
            optimizer.step()
        optimizer.zero_grad()
    return None if loss is None else loss.detach()


def save(accelerator, module, args, step: int, run: Run, final: bool = False) -> None:
    """A resumable checkpoint (every process takes part) and, at the end, the adapter in the output folder."""
    adapter = accelerator.unwrap_model(module).adapter
    output = Path(args.output_dir)
    save_checkpoint(accelerator, adapter, output / "checkpoints", step,
                    {"skipped": dict(run.skipped), "max_steps": args.max_steps, "empty_steps": run.empty_steps},
                    args.name, args.checkpoints_keep)
    if final and accelerator.is_main_process:
        export_adapter(adapter, output / adapter_filename(args.name))
        log.info("adapter written to %s", output / adapter_filename(args.name))


def count_skipped(run: Run, batch: dict, accelerator) -> int:
    """Log this process's skipped samples; -> the usable samples of the micro-batch over every process. Stops
    with a clear error once 2n - 1 samples in a row were skipped on every process, n the samples of one pass
    over the data (the dataset size; for streams the pass size, known after the first pass): any 2n - 1
    consecutive positions hold a whole pass, so nothing in the data is usable."""
    new = batch["skipped"]
    if new:
        run.skipped.update(new)
        log.warning("skipped %d bad sample(s) (%s); %d so far", sum(new.values()), dict(new),
                    sum(run.skipped.values()))
    counts = torch.tensor([batch["size"], sum(new.values())], device=accelerator.device)
    usable, skipped = accelerator.reduce(counts, reduction="sum").tolist()  # the same on every process
    run.bad_run = 0 if usable else run.bad_run + skipped
    pass_size = run.dataset_size or batch.get("pass_size", 0)
    if pass_size and run.bad_run >= 2 * pass_size - 1:
        raise DataError(f"no usable training sample: the last {run.bad_run} samples (more than a whole pass of "
                        f"{pass_size}) were all skipped ({dict(run.skipped)}); check the images and their captions")
    return usable


def train_loop(accelerator, module, optimizer, loader, run: Run, step: int) -> int:
    """Micro-batches until max_steps optimizer steps; checkpoints, scalars and validation on the way."""
    from tqdm.auto import tqdm
    args = run.args
    bar = tqdm(total=args.max_steps, initial=step, desc="training", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    losses, micro, usable_in_step = [], 0, 0
    for batch in loader:
        usable = count_skipped(run, batch, accelerator)
        usable_in_step += usable
        inputs, weight = micro_batch_inputs(run, batch, usable, accelerator.device)
        loss = train_step(accelerator, module, optimizer, inputs, weight, args.max_grad_norm,
                          take_step=usable_in_step > 0)
        if usable:
            losses.append(loss)  # this process's share of the mean (0 for its empty part)
        micro += 1
        if micro % args.gradient_accumulation_steps:
            continue
        step += 1
        log_step(accelerator, run, step, losses, bar)
        losses, usable_in_step = [], 0
        if args.validate_every and step % args.validate_every == 0:
            validate(accelerator, module, run, step)
        if step >= args.max_steps:
            break
        if step % args.save_every == 0:
            save(accelerator, module, args, step, run)
    if run.dataset_size == 0 and step < args.max_steps:
        raise DataError("the data stream ended before max_steps")
    bar.close()
    return step


def log_step(accelerator, run: Run, step: int, losses: list, bar) -> None:
    """The step's loss, the mean over every process, to the bar and the trackers; a step with no usable sample
    anywhere (no losses) is counted and said instead."""
    bar.update(1)
    scalars = {}
    if losses:
        scalars["train/loss"] = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        bar.set_postfix(loss=f"{scalars['train/loss']:.4f}")
    else:
        run.empty_steps += 1
        log.warning("step %d: no usable sample on any process, optimizer step skipped (%d such steps so far)",
                    step, run.empty_steps)
    if step % run.args.log_every == 0 or step == run.args.max_steps:
        scalars.update({"data/skipped": sum(run.skipped.values()), "data/empty_steps": run.empty_steps})
        accelerator.log(scalars, step=step)


def validate(accelerator, module, run: Run, step: int) -> None:
    if accelerator.is_main_process:
        from .validate import run_validation
        run_validation(accelerator, accelerator.unwrap_model(module).adapter, run.frozen, run.args, step)
    accelerator.wait_for_everyone()


def unconditional_inputs(args, frozen, cached: bool, feature: str):
    """The empty prompt's embedding (text drops) and the image-drop features of hidden-state adapters."""
    if cached:
        context, pooled = cache_mod.empty_text(Path(args.cache))
    else:
        with torch.no_grad():
            context, pooled = frozen.encode_text([""])
    zero_hidden = frozen.zero_image_hidden if feature == "hidden" else None
    return context.float(), (None if pooled is None else pooled.float()), zero_hidden


def precache(args, accelerator, frozen, feature: str) -> None:
    """The pre-encode pass: every process encodes its share of --data into --cache, then cache.json."""
    folder = Path(args.cache)
    if (folder / cache_mod.META).is_file():
        log.info("cache %s is complete: not encoding again", folder)
        return
    if is_sharded(args.data or ""):
        raise SystemExit("--precache reads a folder or a .jsonl/.csv; stream tar shards uncached")
    records = records_for(args.data)
    skipped = cache_mod.build_cache(frozen, records, folder, resolution=args.resolution, feature=feature,
                                    rank=accelerator.process_index, world=accelerator.num_processes,
                                    dtype=DTYPES[args.mixed_precision] or torch.float32)
    totals = accelerator.gather_for_metrics([dict(skipped)]) if accelerator.num_processes > 1 else [dict(skipped)]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        cache_mod.finish_cache(frozen, folder, {"data": str(args.data), "resolution": args.resolution,
                                                "feature": feature}, sum(map(Counter, totals), Counter()))
        log.info("cache %s written (%s)", folder, cache_mod.load_meta(folder))
    accelerator.wait_for_everyone()


def make_accelerator(args):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    project = ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "logs"))
    trackers = "tensorboard" if _has_tensorboard() else None
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, log_with=trackers, project_config=project)
    if trackers:
        accelerator.init_trackers("ipadapter", config={k: v for k, v in vars(args).items()
                                                       if isinstance(v, (int, float, str, bool))})
    return accelerator


def _has_tensorboard() -> bool:
    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def main(argv=None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    accelerator = make_accelerator(args)
    try:
        frozen = load_models(args)  # a checkpoint file: refused right after its UNet is loaded
        log.info("training target: %s", describe(frozen.base_model.model_sampling))  # refuses the others
    except UnsupportedModel as error:
        raise SystemExit(str(error)) from None
    module, optimizer = build(args, frozen)  # W'k, W'v copied from the UNet in the checkpoint's own precision
    frozen.to(accelerator.device, DTYPES[args.mixed_precision])
    feature = module.adapter.spec.feature
    if args.precache:
        precache(args, accelerator, frozen, feature)
    module, optimizer = accelerator.prepare(module, optimizer)
    checkpoint = resolve_resume(args.resume, Path(args.output_dir) / "checkpoints")
    state = {"step": 0}
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = read_state(checkpoint)
        log.info("resumed from %s at step %d", checkpoint, state["step"])
    step = state["step"]
    loader, size, cached = get_dataloaders(args, accelerator, step * args.gradient_accumulation_steps)
    run = Run(args, frozen, feature, *unconditional_inputs(args, frozen, cached, feature), cached=cached,
              dataset_size=size, rates=DropRates(args.drop_image, args.drop_text, args.drop_both),
              skipped=Counter(state.get("skipped", {})), rank=accelerator.process_index,
              world=accelerator.num_processes, empty_steps=state.get("empty_steps", 0))
    if step < args.max_steps:
        step = train_loop(accelerator, module, optimizer, loader, run, step)
    save(accelerator, module, args, step, run, final=True)
    accelerator.end_training()
    return Path(args.output_dir) / adapter_filename(args.name)
