"""The paper's metrics for an adapter over a captioned image set (docs/training.md#evaluation):
``python -m training.evaluate --help``.

For every image prompt, ``--images-per-prompt`` images are generated through the nodes' own code path (empty text
prompt, lambda = 1). CLIP-I: cosine similarity of the CLIP image embeddings of generated image and image prompt.
CLIP-T: CLIPScore, 2.5 * max(cos, 0), of generated image and the prompt image's caption. Both with an open_clip
model named by ``--clip-model`` (or an open_clip model config .json) and loaded from ``--clip-weights`` (a file;
nothing is downloaded). The paper uses ViT-L/14 on COCO 2017 val and reports CLIP-T 0.588, CLIP-I 0.828.
"""

if __name__ == "__main__":  # `python -m training.evaluate` from the repository: the package's own copy runs
    import launch
    raise SystemExit(launch.run_module("training.evaluate"))

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("training.evaluate")


def load_scorer(model_name: str, weights: str, device="cpu"):
    """(model, preprocess, tokenizer) of open_clip from a local weights file. ``model_name``: an open_clip model
    name, or the path of an open_clip model config .json (registered under its file name's stem)."""
    import open_clip
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--clip-weights '{weights}' is not a file: download the open_clip weights for "
                                f"{model_name} yourself and pass their path")
    if model_name.endswith(".json") and Path(model_name).is_file():
        open_clip.add_model_config(model_name)
        model_name = Path(model_name).stem
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=weights, device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


@torch.no_grad()
def image_embeddings(model, preprocess, images) -> torch.Tensor:
    """IMAGE tensors (n, H, W, 3) in [0, 1] -> unit CLIP embeddings (n, D), through open_clip's own transform."""
    from PIL import Image
    pils = [Image.fromarray((img.clamp(0, 1).numpy() * 255).round().astype("uint8")) for img in images]
    device = next(model.parameters()).device
    batch = torch.stack([preprocess(p) for p in pils]).to(device)
    return F.normalize(model.encode_image(batch).float(), dim=-1)


@torch.no_grad()
def text_embeddings(model, tokenizer, texts) -> torch.Tensor:
    device = next(model.parameters()).device
    return F.normalize(model.encode_text(tokenizer(list(texts)).to(device)).float(), dim=-1)


def scores(generated: torch.Tensor, reference: torch.Tensor, caption: torch.Tensor) -> tuple[float, float]:
    """Unit embeddings of k generated images (k, D), their image prompt (1, D) and its caption (1, D) ->
    (CLIP-I, CLIP-T) averaged over the k images."""
    clip_i = (generated @ reference.T).mean().item()
    clip_t = (2.5 * (generated @ caption.T).clamp(min=0)).mean().item()
    return clip_i, clip_t


def evaluate(frozen, adapter, samples, scorer, *, images_per_prompt: int, size: int, steps: int, cfg: float,
             seed: int, output: Path | None = None) -> dict:
    """samples: [(image (1, R, R, 3), caption)] -> {"clip_i", "clip_t", "count"}."""
    from .validate import generate
    model, preprocess, tokenizer = scorer
    all_i, all_t = [], []
    for n, (image, caption) in enumerate(samples):
        made = torch.cat([generate(frozen, adapter, image, size=size, steps=steps, cfg=cfg, seed=seed + k)
                          for k in range(images_per_prompt)])  # (k, R, R, 3)
        clip_i, clip_t = scores(image_embeddings(model, preprocess, made), image_embeddings(model, preprocess, image),
                                text_embeddings(model, tokenizer, [caption]))
        all_i.append(clip_i)
        all_t.append(clip_t)
        if output is not None:
            _save(made, output / f"{n:05d}")
        log.info("%d/%d  CLIP-I %.4f  CLIP-T %.4f", n + 1, len(samples), clip_i, clip_t)
    return {"clip_i": sum(all_i) / len(all_i), "clip_t": sum(all_t) / len(all_t), "count": len(all_i)}


def _save(images, stem: Path) -> None:
    from PIL import Image
    stem.parent.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images):
        Image.fromarray((img.numpy() * 255).round().astype("uint8")).save(f"{stem}_{k}.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--adapter", required=True, help="IP-Adapter file to score")
    p.add_argument("--checkpoint", help="SD1.5 or SDXL single-file checkpoint")
    p.add_argument("--clip-vision", help="the CLIP vision file the adapter reads")
    p.add_argument("--models-from", help="MODULE:FUNCTION returning a training.frozen.FrozenModels (with the host's "
                                         "VAE, CLIP and CLIP vision objects) instead of --checkpoint/--clip-vision")
    p.add_argument("--data", required=True, help="captioned images: a folder with .txt captions or a .jsonl/.csv")
    p.add_argument("--clip-model", default="ViT-L-14",
                   help="open_clip model name (the paper: ViT-L/14) or an open_clip model config .json")
    p.add_argument("--clip-weights", required=True, help="open_clip weights file for --clip-model")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--limit", type=int, default=0, help="score the first N samples (0: all)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--comfyui", help="ComfyUI folder")
    p.add_argument("--output-dir", help="also save the generated images and scores.json here")
    return p.parse_args(argv)


def load_models(args):
    """The frozen models: from a factory (``--models-from``) or the host's loaders."""
    from ..host.locate import import_host
    from .frozen import from_factory, load_frozen
    if args.models_from:
        return from_factory(args.models_from)
    if not (args.checkpoint and args.clip_vision):
        raise SystemExit("give --checkpoint and --clip-vision (or --models-from)")
    import_host(args.comfyui)
    return load_frozen(args.checkpoint, args.clip_vision, None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from ..ipadapter_core import IPAdapterModel, load_adapter_file
    from .data import Bad, read_record, records_for
    scorer = load_scorer(args.clip_model, args.clip_weights)
    frozen = load_models(args)
    adapter = IPAdapterModel.from_state_dict(load_adapter_file(args.adapter)[0])
    records = records_for(args.data)[: args.limit or None]
    items = [read_record(r, args.resolution) for r in records]
    samples = [(item["pixels"].permute(1, 2, 0)[None], item["text"]) for item in items if not isinstance(item, Bad)]
    output = Path(args.output_dir) if args.output_dir else None
    result = evaluate(frozen, adapter, samples, scorer, images_per_prompt=args.images_per_prompt,
                      size=args.resolution, steps=args.steps, cfg=args.cfg, seed=args.seed, output=output)
    result["skipped"] = len(items) - len(samples)
    if output is not None:
        (output / "scores.json").write_text(json.dumps(result, indent=1))
    log.info("CLIP-I %.4f  CLIP-T %.4f  over %d image prompts", result["clip_i"], result["clip_t"], result["count"])
    return result
