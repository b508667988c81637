"""IMAGE_PROMPT: everything any adapter variant needs from one CLIP vision encode."""
from dataclasses import dataclass

import torch

from .checks import finite_number, number_list
from .errors import AdapterFileError, EncoderMismatchError, InputError
from .face_prompt import FacePrompt
from .siglip_head import NO_POOLING_HEAD
from .spec import ENCODERS_BY_HIDDEN_WIDTH, AdapterSpec


@dataclass(frozen=True)
class ImagePrompt:
    """Features of n reference images and of their unconditional (negative) counterparts.

    embeds (n, E): pooled, projected image embeddings. hidden (n, P, W): penultimate hidden states.
    uncond_*: the same for the CFG uncond rows (reference semantics: zero embeddings and the encoder's hidden
    states of the all-zero normalised pixel tensor, or a user's negative image).
    regions (n, H, W) in [0, 1], or None: image i acts only inside region i (a tiled reference's tiles,
    docs/inference.md#tiled-encoding); None: every image acts everywhere.
    """
    embeds: torch.Tensor
    hidden: torch.Tensor
    uncond_embeds: torch.Tensor
    uncond_hidden: torch.Tensor
    regions: torch.Tensor | None = None

    def __post_init__(self):
        n = self.embeds.shape[0]
        if not (self.hidden.shape[0] == self.uncond_embeds.shape[0] == self.uncond_hidden.shape[0] == n):
            raise ValueError("an image prompt needs as many uncond rows as reference images "
                             f"(embeds {n}, hidden {self.hidden.shape[0]}, uncond {self.uncond_embeds.shape[0]}"
                             f"/{self.uncond_hidden.shape[0]})")
        if self.regions is not None and (self.regions.dim() != 3 or self.regions.shape[0] != n):
            raise ValueError(f"an image prompt's regions must be (n, H, W) with n = {n} images, got "
                             f"{tuple(self.regions.shape)}")

    def image(self, i: int) -> "ImagePrompt":
        """Image i alone (its region dropped: the caller applies it as a mask)."""
        return ImagePrompt(*(getattr(self, name)[i:i + 1] for name in _FIELDS))

    @property
    def count(self) -> int:
        return self.embeds.shape[0]

    @property
    def encoder(self) -> str:
        width = self.hidden.shape[-1]
        return ENCODERS_BY_HIDDEN_WIDTH.get(width, f"a CLIP vision model with hidden width {width}")

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        regions = [] if self.regions is None else [("regions", self.regions)]
        return [(name, getattr(self, name)) for name in _FIELDS] + regions

    def features(self, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) features of the kind an adapter reads: "pooled" or "hidden"."""
        if feature == "pooled":
            return self.embeds, self.uncond_embeds
        return self.hidden, self.uncond_hidden

    def adapter_features(self, spec: AdapterSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) in the form the adapter's projection reads."""
        self.check_fits(spec)
        return self.features(spec.feature)

    def check_fits(self, spec: AdapterSpec) -> None:
        if spec.is_faceid:
            raise EncoderMismatchError(
                f"this {spec.describe} reads a face embedding, but it got a CLIP image prompt (Encode Image "
                "Prompt): use Load Face Analysis -> Encode Face Prompt for it, or a CLIP IP-Adapter (Load "
                "IP-Adapter) for this image prompt")
        cond, _ = self.features(spec.feature)
        if spec.feature == "pooled" and cond.dim() != 2:
            raise EncoderMismatchError(
                f"this {spec.describe} reads the encoder's pooled embedding, but the image prompt holds its "
                f"{cond.shape[-2]} token states: {NO_POOLING_HEAD}")
        if cond.shape[-1] != spec.encoder_width:
            raise EncoderMismatchError(
                f"this {spec.describe} reads {spec.feature} image features of width {spec.encoder_width}, but "
                f"the image prompt was encoded with {self.encoder} ({spec.feature} width {cond.shape[-1]}). "
                f"Load {spec.encoder} in Load CLIP Vision and encode the image again.")


def with_default_uncond(embeds: torch.Tensor, hidden: torch.Tensor, zero_image_hidden: torch.Tensor
                        ) -> ImagePrompt:
    """The reference's negative: zero embeddings (base) and the zero-pixel hidden states (plus, full-face)."""
    n = embeds.shape[0]
    uncond_hidden = zero_image_hidden.to(hidden).expand(n, *hidden.shape[1:])  # (n, P, W), no copy
    return ImagePrompt(embeds, hidden, torch.zeros_like(embeds), uncond_hidden)


COMBINE_METHODS = ("concat", "average", "weighted average", "add", "subtract", "norm average", "max", "min")
_NORM_EPS = 1e-12  # norm average: a feature that is 0 in every image stays 0 instead of becoming NaN


def _reduce(method: str, t: torch.Tensor) -> torch.Tensor:
    """(n, ...) features of n images -> (1, ...) by one of the methods the incumbent's combine offers."""
    if method == "add":
        out = t.sum(0)
    elif method == "subtract":  # the first image minus the mean of the others
        out = t[0] - t[1:].mean(0)
    elif method == "norm average":  # each feature divided by its norm over the images, then the mean
        out = (t / t.norm(dim=0, keepdim=True).clamp_min(_NORM_EPS)).mean(0)
    elif method == "max":
        out = t.amax(0)
    else:
        out = t.amin(0)
    return out[None]


def combine_prompts(prompts, method: str = "concat", weights=None):
    """Several image prompts (or several face prompts) -> one. Their images (faces) are taken in order; then

    - ``concat``: every image stays (their tokens are concatenated, or one per latent row with batch unfold);
    - ``average``: one image whose features (and negative features) are the mean over the images;
    - ``weighted average``: sum(w_i * f_i) / sum(w_i), one weight per image;
    - ``add``, ``subtract`` (f_1 - mean of the others), ``norm average`` (mean of f_i / ||f||, the norm over the
      images, per feature), ``max``, ``min``: one image of those features, with the first image's negative (as
      ComfyUI_IPAdapter_plus combines); a single image is kept as it is.

    Face prompts combine the same way, face by face (docs/faceid.md#face-prompt); a face prompt and a CLIP image
    prompt do not combine.
    """
    prompts = list(prompts)
    if not prompts:
        raise InputError("no image prompts to combine: connect image_prompt")
    faces = [isinstance(p, FacePrompt) for p in prompts]
    if any(faces):
        if not all(faces):
            raise InputError("image_prompt: a face prompt (Encode Face Prompt) and a CLIP image prompt (Encode "
                             "Image Prompt) cannot be combined: they feed different adapters; apply each with its "
                             "own Apply IP-Adapter")
        return _combine_faces(prompts, method, weights)
    shapes = {(p.embeds.shape[1:], p.hidden.shape[1:]) for p in prompts}
    if len(shapes) != 1:
        raise EncoderMismatchError("image prompts encoded with different CLIP vision models cannot be combined ("
                                   f"{', '.join(sorted({p.encoder for p in prompts}))}): encode them all with the "
                                   "encoder the adapter needs")
    parts = [torch.cat([getattr(p, name) for p in prompts]) for name in _FIELDS]  # each (n, ...)
    if method == "concat":
        return ImagePrompt(*parts, regions=_concat_regions(prompts))
    return ImagePrompt(*_combined(parts, (2, 3), method, weights))


def _combined(parts: list, negatives: tuple[int, ...], method: str, weights) -> list:
    """Features (each (n, ...), one row per image) -> (1, ...) each by ``method`` (not concat); ``negatives``:
    the positions of the negative features, which the incumbent's methods take from the first image."""
    count = parts[0].shape[0]
    if method in COMBINE_METHODS[3:]:
        if count == 1:
            return parts
        return [t[:1] if i in negatives else _reduce(method, t) for i, t in enumerate(parts)]
    if method == "average":
        w = torch.full((count,), 1.0 / count)
    elif method == "weighted average":
        w = _normalised_weights(weights, count)
    else:
        raise InputError(f"method: unknown combine method {method!r}; choose one of {', '.join(COMBINE_METHODS)}")
    return [torch.einsum("n,n...->...", w.to(t), t)[None] for t in parts]  # (1, ...)


def _combine_faces(prompts, method: str, weights) -> FacePrompt:
    """Face prompts -> one: their faces in order (concat), or one face of combined embeddings (and crops)."""
    crops = {p.hidden is None for p in prompts}
    if len(crops) != 1:
        raise InputError("image_prompt: some face prompts have face crops (clip_vision connected to Encode Face "
                         "Prompt) and some do not: connect the same clip_vision to every Encode Face Prompt")
    widths = {p.hidden.shape[1:] for p in prompts if p.hidden is not None}
    if len(widths) > 1:
        raise EncoderMismatchError("face prompts whose crops were encoded with different CLIP vision models cannot "
                                   f"be combined ({', '.join(sorted({p.encoder for p in prompts}))}): encode them "
                                   "all with the encoder the adapter needs")
    names = ("embeds", "raw") + (() if prompts[0].hidden is None else ("hidden", "uncond_hidden"))
    parts = [torch.cat([getattr(p, name) for p in prompts]) for name in names]  # each (n, ...)
    sources, offset = [], 0
    for p in prompts:  # the image each face came from, numbered across the prompts' images
        sources += [offset + i for i in p.sources]
        offset += max(p.sources, default=-1) + 1
    if method != "concat":
        parts, sources = _combined(parts, (3,), method, weights), sources[:1]
    return FacePrompt(*parts, sources=tuple(sources))


def _concat_regions(prompts) -> torch.Tensor | None:
    """The regions of concatenated prompts: None unless one has regions; then full regions for the images of those
    without, every region resized (bilinear) to the first one's size."""
    sized = [p.regions for p in prompts if p.regions is not None]
    if not sized:
        return None
    h, w = sized[0].shape[-2:]
    out = []
    for p in prompts:
        r = torch.ones(p.count, h, w) if p.regions is None else p.regions.float()
        out.append(r if r.shape[-2:] == (h, w) else torch.nn.functional.interpolate(
            r[:, None], size=(h, w), mode="bilinear")[:, 0])  # (n, h, w)
    return torch.cat(out)


def _normalised_weights(weights, count: int) -> torch.Tensor:
    """``weights``: the node's text ('1.0, 0.5') or numbers; one per image, a non-zero sum."""
    values = number_list("weights", weights) if isinstance(weights, str) else [
        finite_number("weights", float(x)) for x in (weights or [])]
    if len(values) != count:
        raise InputError(f"weights: a weighted average needs one weight per reference image, got {len(values)} "
                         f"for {count} images: give {count} numbers, e.g. '{', '.join(['1.0'] * count)}'")
    w = torch.tensor(values, dtype=torch.float64)
    if w.sum() == 0:
        raise InputError("weights sum to 0: give at least one non-zero weight (the average divides by the sum)")
    return (w / w.sum()).float()


_FIELDS = ("embeds", "hidden", "uncond_embeds", "uncond_hidden")
PROMPT_FORMAT = "ipadapter_image_prompt"


FACE_FIELDS = ("embeds", "raw", "hidden", "uncond_hidden")


def prompt_tensors(prompt) -> dict[str, torch.Tensor]:
    """The tensors of a prompt file (contiguous CPU copies, dtype kept); a face prompt's under ``face_*`` names,
    with the image each face came from (``face_sources``)."""
    if isinstance(prompt, FacePrompt):
        tensors = {f"face_{name}": t for name, t in prompt.named_tensors()}
        tensors["face_sources"] = torch.tensor(prompt.sources, dtype=torch.int64)
        return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    names = _FIELDS + (("regions",) if prompt.regions is not None else ())
    return {name: getattr(prompt, name).detach().to("cpu").contiguous() for name in names}


def prompt_from_tensors(tensors, source: str = "the file"):
    if "face_embeds" in tensors:
        return _face_prompt_from_tensors(tensors, source)
    missing = [name for name in _FIELDS if name not in tensors]
    if missing:
        raise AdapterFileError(f"{source} is not a saved image prompt (missing {', '.join(missing)}): save one with "
                         "Save Image Prompt")
    return ImagePrompt(*(tensors[name] for name in _FIELDS), regions=tensors.get("regions"))


def _face_prompt_from_tensors(tensors, source: str) -> FacePrompt:
    crops = [name for name in ("face_hidden", "face_uncond_hidden") if name in tensors]
    missing = [name for name in ("face_raw", "face_sources") if name not in tensors]
    if missing or len(crops) == 1:
        missing += [name for name in ("face_hidden", "face_uncond_hidden") if crops and name not in tensors]
        raise AdapterFileError(f"{source} is not a complete saved face prompt (missing {', '.join(missing)}): save "
                               "it again with Save Image Prompt")
    try:
        return FacePrompt(*(tensors.get(f"face_{name}") for name in FACE_FIELDS),
                          sources=tuple(int(i) for i in tensors["face_sources"].tolist()))
    except ValueError as exc:
        raise AdapterFileError(f"{source}: {exc}: save it again with Save Image Prompt") from exc
