"""Train an IP-Adapter on the host's own models: ``python -m training.train --help``.

Shape of the script (accelerate's examples): get_dataloaders / build / train_step / save / main. Every random draw
of a sample is a function of (seed, its global position), and the data position follows from the step, so a run
resumed from a checkpoint, or run on more processes with the same global batch, trains the same adapter.
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
                   records_for)
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
    bad_run: int = 0


def load_models(args):
    """The frozen models: from a factory (``--models-from``) or the host's loaders. Training from a complete
    cache without validation loads the UNet only."""
    if args.models_from:
        module, _, function = args.models_from.partition(":")
        return getattr(importlib.import_module(module), function)()
    if not args.checkpoint:
        raise SystemExit("give --checkpoint and --clip-vision (or --models-from)")
    from ..host.locate import import_host
    from .frozen import load_frozen
    import_host(args.comfyui)
    cache = Path(args.cache) if args.cache else None
    if cache and (cache / cache_mod.META).is_file() and not args.validate_every:
        frozen = load_frozen(args.checkpoint, None, DTYPES[args.mixed_precision], encoders=False)
        return frozen.with_cache_widths(cache_mod.load_meta(cache)["embed_width"], cache_mod.zero_image_hidden(cache))
    if not args.clip_vision:
        raise SystemExit("give --clip-vision (the CLIP vision file the adapter will read)")
    return load_frozen(args.checkpoint, args.clip_vision, DTYPES[args.mixed_precision])


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
    """-> (loader, dataset size or 0 for streams, cached?). Map-style data is read by global position."""
    rank, world = accelerator.process_index, accelerator.num_processes
    micro_steps = args.max_steps * args.gradient_accumulation_steps
    if args.cache and (Path(args.cache) / cache_mod.META).is_file():
        dataset = PositionDataset(cache_mod.cached_records(Path(args.cache)), args.resolution, args.seed,
                                  read=cache_mod.read_cached)
        cached = True
    elif args.data and is_sharded(args.data):
        stream = ShardStream(_shard_list(args.data), args.resolution, args.seed, rank, world,
                             skip=first_micro_step * args.batch_size)
        loader = torch.utils.data.DataLoader(DecodedShards(stream), batch_size=args.batch_size, collate_fn=collate,
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
    world, rank = run.world, run.rank
    positions = batch["position"].tolist() if run.dataset_size else [p * world + rank for p in batch["position"]]
    sampling = frozen.base_model.model_sampling
    draws = draw(run.args.seed, positions, latents.shape[1:], len(sampling.sigmas), run.rates)
    uncond = uncond_image_features(run.feature, features, run.uncond_features)
    features = where_rows(draws.drop_image, uncond, features)
    context = where_rows(draws.drop_text, run.empty_context, context)
    y = None
    if pooled is not None and getattr(frozen.base_model, "adm_channels", 0):
        pooled = where_rows(draws.drop_text, run.empty_pooled, pooled.float())
        size = run.args.resolution
        y = frozen.base_model.encode_adm(pooled_output=pooled, width=size, height=size, crop_w=0, crop_h=0,
                                         target_width=size, target_height=size)
    inputs = dict(features=features, context=context, latents=latents, noise=draws.noise,
                  timesteps=draws.timesteps, y=y)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def train_step(accelerator, module, optimizer, inputs: dict | None, max_grad_norm: float) -> torch.Tensor:
    """One micro-batch: epsilon MSE, backward, and (on the last micro-batch of a step) the optimizer step.
    A micro-batch with no usable sample still takes part (zero loss) so every process reaches the step."""
    with accelerator.accumulate(module):
        if inputs is None:
            loss = sum(p.sum() for p in module.parameters()) * 0.0
        else:
            eps = module(**inputs)
            loss = F.mse_loss(eps, inputs["noise"].float())
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return loss.detach()


def save(accelerator, module, args, step: int, run: Run, final: bool = False) -> None:
    """A resumable checkpoint (every process takes part) and, at the end, the adapter in the output folder."""
    adapter = accelerator.unwrap_model(module).adapter
    output = Path(args.output_dir)
    save_checkpoint(accelerator, adapter, output / "checkpoints", step,
                    {"skipped": dict(run.skipped), "max_steps": args.max_steps}, args.name, args.checkpoints_keep)
    if final and accelerator.is_main_process:
        export_adapter(adapter, output / adapter_filename(args.name))
        log.info("adapter written to %s", output / adapter_filename(args.name))


def count_skipped(run: Run, batch: dict) -> None:
    """Log the skipped samples; stop with a clear error when a whole pass over the data gave nothing usable."""
    new = batch["skipped"]
    if new:
        run.skipped.update(new)
        log.warning("skipped %d bad sample(s) (%s); %d so far", sum(new.values()), dict(new),
                    sum(run.skipped.values()))
    run.bad_run = 0 if batch["size"] else run.bad_run + sum(new.values())
    limit = max(run.dataset_size, 1) * max(run.world, 1)
    if run.bad_run >= limit and run.dataset_size:
        raise DataError(f"no usable training sample: the last {run.bad_run} samples were all skipped "
                        f"({dict(run.skipped)}); check the images and their .txt captions")


def train_loop(accelerator, module, optimizer, loader, run: Run, step: int) -> int:
    """Micro-batches until max_steps optimizer steps; checkpoints, scalars and validation on the way."""
    from tqdm.auto import tqdm
    args = run.args
    bar = tqdm(total=args.max_steps, initial=step, desc="training", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    losses, micro = [], 0
    for batch in loader:
        count_skipped(run, batch)
        inputs = model_inputs(run, batch, accelerator.device) if batch["size"] else None
        loss = train_step(accelerator, module, optimizer, inputs, args.max_grad_norm)
        losses.append(loss)
        micro += 1
        if micro % args.gradient_accumulation_steps:
            continue
        step += 1
        mean = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        losses = []
        bar.update(1)
        bar.set_postfix(loss=f"{mean:.4f}")
        if step % args.log_every == 0 or step == args.max_steps:
            accelerator.log({"train/loss": mean, "data/skipped": sum(run.skipped.values())}, step=step)
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
    frozen = load_models(args)
    frozen.to(accelerator.device, DTYPES[args.mixed_precision])
    module, optimizer = build(args, frozen)
    feature = module.adapter.spec.feature
    if args.precache:
        precache(args, accelerator, frozen, feature)
    module, optimizer = accelerator.prepare(module, optimizer)
    checkpoint = resolve_resume(args.resume, Path(args.output_dir) / "checkpoints")
    step, skipped = 0, Counter()
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = read_state(checkpoint)
        step, skipped = state["step"], Counter(state.get("skipped", {}))
        log.info("resumed from %s at step %d", checkpoint, step)
    loader, size, cached = get_dataloaders(args, accelerator, step * args.gradient_accumulation_steps)
    run = Run(args, frozen, feature, *unconditional_inputs(args, frozen, cached, feature), cached=cached,
              dataset_size=size, rates=DropRates(args.drop_image, args.drop_text, args.drop_both), skipped=skipped,
              rank=accelerator.process_index, world=accelerator.num_processes)
    if step < args.max_steps:
        step = train_loop(accelerator, module, optimizer, loader, run, step)
    save(accelerator, module, args, step, run, final=True)
    accelerator.end_training()
    return Path(args.output_dir) / adapter_filename(args.name)
