"""SigLIP's attention-pooling head: the pooled image embedding (n, W) of SigLIP so400m-patch14-384, computed from
the post-LayerNorm token states (n, N, W) (docs/inference.md#siglip-pooled-embedding).

Published keys (``vision_model.head.`` prefix in the file; the module's own names are the rest, loaded strictly,
nothing renamed; so400m: W = 1152, I = 4304, 16 heads; docs/formats.md#siglip-pooling-head):

- ``probe [1, 1, W]``: the one learned query;
- ``attention.in_proj_weight [3W, W]``, ``attention.in_proj_bias [3W]``, ``attention.out_proj.weight [W, W]``,
  ``attention.out_proj.bias [W]``: torch's ``nn.MultiheadAttention`` (batch first);
- ``layernorm.weight [W]``, ``layernorm.bias [W]`` (eps 1e-6, SigLIP's own);
- ``mlp.fc1.weight [I, W]``, ``mlp.fc1.bias [I]``, ``mlp.fc2.weight [W, I]``, ``mlp.fc2.bias [W]`` (GELU, tanh
  approximation).
"""
from typing import Mapping

import torch
from torch import nn

from .errors import AdapterFileError, EncoderMismatchError

HEAD_PREFIX = "vision_model.head."
LAYER_NORM_EPS = 1e-6  # SigLIP's, not the host tower's 1e-5 (docs/inference.md#siglip-pooled-embedding)
SO400M_HEADS = 16
SO400M_WIDTH, SO400M_INTERMEDIATE = 1152, 4304
NO_POOLING_HEAD = (
    "the loaded SigLIP has no pooling head (vision_model.head.*) among the files in models/clip_vision: the "
    "Flux IP-Adapter reads SigLIP's pooled embedding, which the host does not compute. Put "
    "google/siglip-so400m-patch14-384's model.safetensors (it has the head) in models/clip_vision, load that file "
    "with Load CLIP Vision and encode the image again")


def head_shapes(width: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    """{key without the prefix: shape} of a head of width W and MLP width I."""
    w, i = width, intermediate
    return {"probe": (1, 1, w), "attention.in_proj_weight": (3 * w, w), "attention.in_proj_bias": (3 * w,),
            "attention.out_proj.weight": (w, w), "attention.out_proj.bias": (w,),
            "layernorm.weight": (w,), "layernorm.bias": (w,), "mlp.fc1.weight": (i, w), "mlp.fc1.bias": (i,),
            "mlp.fc2.weight": (w, i), "mlp.fc2.bias": (w,)}


class _MLP(nn.Module):
    def __init__(self, width: int, intermediate: int, operations=nn):
        super().__init__()
        self.fc1 = operations.Linear(width, intermediate)
        self.fc2 = operations.Linear(intermediate, width)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x), approximate="tanh"))


class SiglipPoolingHead(nn.Module):
    """Multi-head attention pooling: one learned query (``probe``) attends over the token states, then a residual
    MLP on its LayerNorm; (B, N, W) -> (B, W)."""

    def __init__(self, *, width: int, intermediate: int, heads: int = SO400M_HEADS, eps: float = LAYER_NORM_EPS,
                 operations=nn):
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layernorm = operations.LayerNorm(width, eps=eps)
        self.mlp = _MLP(width, intermediate, operations)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(hidden.shape[0], -1, -1)  # (B, 1, W)
        out = self.attention(probe, hidden, hidden, need_weights=False)[0]  # (B, 1, W)
        out = out + self.mlp(self.layernorm(out))  # (B, 1, W)
        return out[:, 0]  # (B, W)


def _key(key: str) -> str:
    return f"{HEAD_PREFIX}{key}"


def check_head(tensors: Mapping[str, torch.Tensor], heads: int = SO400M_HEADS, width: int | None = None
               ) -> tuple[int, int]:
    """(W, I) of head tensors keyed without the prefix, or an error naming the key: AdapterFileError for missing,
    extra, misshapen, non-float or non-finite tensors; EncoderMismatchError when W is not ``width`` (the encoder's)."""
    for key in head_shapes(1, 1):
        if key not in tensors:
            raise AdapterFileError(f"SigLIP pooling head: '{_key(key)}' is missing: the file is incomplete; use "
                                   "google/siglip-so400m-patch14-384's model.safetensors")
        if not isinstance(tensors[key], torch.Tensor) or not tensors[key].is_floating_point():
            raise AdapterFileError(f"SigLIP pooling head: '{_key(key)}' is {getattr(tensors[key], 'dtype', None)}, "
                                   "not floating point: the file is not a SigLIP checkpoint; use the official one")
    extra = sorted(set(tensors) - set(head_shapes(1, 1)))
    if extra:
        raise AdapterFileError(f"SigLIP pooling head: unexpected key(s) {', '.join(map(_key, extra[:4]))}: not the "
                               "SigLIP head layout; use google/siglip-so400m-patch14-384's model.safetensors")
    probe, fc1 = tensors["probe"].shape, tensors["mlp.fc1.weight"].shape
    w, i = (probe[-1] if probe else 0), (fc1[0] if fc1 else 0)
    for key, shape in head_shapes(w, i).items():
        if tuple(tensors[key].shape) != shape:
            raise AdapterFileError(f"SigLIP pooling head: '{_key(key)}' has shape {list(tensors[key].shape)}, "
                                   f"expected {list(shape)} (width {w}, MLP width {i}): the file is damaged or not "
                                   "SigLIP; use the official one")
        if tensors[key].device.type != "meta" and not torch.isfinite(tensors[key]).all():
            raise AdapterFileError(f"SigLIP pooling head: '{_key(key)}' has NaN/Inf values: the file is damaged; "
                                   "download it again")
    if width is not None and w != width:
        raise EncoderMismatchError(f"SigLIP pooling head: width {w} ('{_key('probe')}'), the loaded encoder's is "
                                   f"{width}: the head is from another SigLIP; use the file of the loaded one")
    if heads < 1 or w % heads:
        raise AdapterFileError(f"SigLIP pooling head: width {w} does not split into {heads} heads: not SigLIP "
                               "so400m's head; use the official file")
    return w, i


def build_pooling_head(tensors: Mapping[str, torch.Tensor], heads: int = SO400M_HEADS, width: int | None = None,
                       operations=nn) -> SiglipPoolingHead:
    """Check, build on the meta device and load strictly (tensors are taken, not copied); float32, eval, no grad.
    ``tensors`` are keyed without the ``vision_model.head.`` prefix (see ``strip_head_prefix``)."""
    w, i = check_head(tensors, heads, width)
    with torch.device("meta"):
        head = SiglipPoolingHead(width=w, intermediate=i, heads=heads, operations=operations)
    head.load_state_dict(dict(tensors), strict=True, assign=True)
    return head.float().eval().requires_grad_(False)


def strip_head_prefix(flat: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``vision_model.head.*`` tensors of a flat state dict, keyed without the prefix."""
    return {key[len(HEAD_PREFIX):]: value for key, value in flat.items() if key.startswith(HEAD_PREFIX)}
