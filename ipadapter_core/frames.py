"""Which frame each row of a UNet call is, and the per-frame data of one adapter application picked by it.

A call's batch is one chunk of rows per entry of ``cond_or_uncond``, and row r of every chunk is the same frame.
That frame is absolute when a sampler windows the batch: AnimateDiff-Evolved's ``ad_params["sub_idxs"]`` (its
published contract), or the host's ``context_window.index_list`` when the window runs over the batch dimension
(``dim`` 0), after the window's ``causal_anchor_index`` when the host set one (its ``causal_window_fix`` adds the
frame before the window as the call's first row); otherwise row r is frame r. Per-frame data with S entries gives frame f entry min(f, S - 1): fewer
entries than frames repeat the last one, more use the first ones.

Index tensors are built from those Python ints once per call (never read back from the device), so the patch
makes no host synchronisation.
"""
import functools
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange


@dataclass(frozen=True)
class CallRows:
    """The rows of one UNet call: ``chunks`` (cond_or_uncond: 1 = uncond, else cond), ``per`` rows each, and the
    absolute frame of each row of a chunk (``frames``; None: row r is frame r)."""
    chunks: tuple[int, ...]
    per: int
    frames: tuple[int, ...] | None = None

    @property
    def batch(self) -> int:
        return self.per * len(self.chunks)

    def frame_list(self):
        return range(self.per) if self.frames is None else self.frames


def call_rows(extra_options: Mapping, batch: int) -> CallRows:
    """The CallRows of a call with ``batch`` rows, from the host's ``transformer_options`` (``extra_options``)."""
    chunks = tuple(extra_options.get("cond_or_uncond") or (0,))
    per, rest = divmod(batch, len(chunks))
    if rest:
        raise ValueError(f"batch of {batch} rows does not split into {len(chunks)} cond/uncond chunks")
    return CallRows(chunks, per, window_frames(extra_options, per))


def window_frames(extra_options: Mapping, per: int) -> tuple[int, ...] | None:
    """The absolute frames of a windowed call's rows (sub_idxs, else a dim-0 context window's index_list), or None
    when the rows are frames 0..per-1 (no window, the first window, or a list that does not fit the rows)."""
    ad_params = extra_options.get("ad_params")
    frames = ad_params.get("sub_idxs") if isinstance(ad_params, Mapping) else None
    if frames is None:
        window = extra_options.get("context_window")
        if window is not None and getattr(window, "dim", 0) == 0:
            frames = getattr(window, "index_list", None)
            # The host's causal_window_fix (on by default where the host has it) puts the frame before the window
            # first: the rows are [anchor] + index_list, as the window's own get_tensor slices them.
            anchor = getattr(window, "causal_anchor_index", None)
            if frames is not None and anchor is not None and anchor >= 0:
                frames = [anchor, *frames]
    if frames is None or len(frames) != per:
        return None
    frames = tuple(int(f) for f in frames)  # Python ints from the sampler, not device values
    return None if frames == tuple(range(per)) else frames


def long_tensor(values, device) -> torch.Tensor:
    """Host ints -> a LongTensor on ``device`` (to a GPU from pinned memory, queued without waiting for it), a
    normal tensor even under inference mode (the caches outlive it)."""
    device = torch.device(device)
    with torch.inference_mode(False):
        index = torch.tensor(list(values), dtype=torch.long)
        if device.type == "cuda":
            index = index.pin_memory()
        return index.to(device, non_blocking=True)


@functools.lru_cache(maxsize=128)
def frame_index(frames: tuple[int, ...], entries: int, device: torch.device) -> torch.Tensor:
    """(per,) index of each row's entry among ``entries`` per-frame entries; built once per call and device."""
    return long_tensor((min(f, entries - 1) for f in frames), device)


def pick(t: torch.Tensor, rows: CallRows) -> torch.Tensor:
    """Per-frame entries (S, ...) -> (per, ...) for the rows of one chunk: a single entry is shared by every row."""
    entries = t.shape[0]
    if entries == 1:
        return t.expand(rows.per, *t.shape[1:])
    if rows.frames is None:
        if entries >= rows.per:
            return t[:rows.per]
        return torch.cat([t, t[-1:].expand(rows.per - entries, *t.shape[1:])])
    return t.index_select(0, frame_index(rows.frames, entries, t.device))


def chunk_rows(cond: torch.Tensor, uncond: torch.Tensor, rows: CallRows) -> torch.Tensor:
    """(S, ...) entries for cond and for uncond rows -> (B, ...), one chunk per entry of cond_or_uncond."""
    parts = [pick(uncond if c == 1 else cond, rows) for c in rows.chunks]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def latent_grid(tokens: int, original_shape) -> tuple[int, int]:
    """The (h, w) grid of a layer with ``tokens`` query positions in a UNet run on a latent of ``original_shape``
    (B, C, H, W): each downsampling halves the sides, rounding up."""
    if original_shape is None:
        raise ValueError("an attention mask needs the latent size (transformer_options['original_shape'])")
    h, w = original_shape[-2:]
    for _ in range(8):
        if h * w == tokens:
            return h, w
        h, w = -(-h // 2), -(-w // 2)
    raise ValueError(f"cannot place an attention mask on a layer with {tokens} positions for a latent of "
                     f"{original_shape[-2]}x{original_shape[-1]}")


def layer_mask(mask: torch.Tensor, tokens: int, original_shape) -> torch.Tensor:
    """Mask (M, H, W) -> (M, L, 1) on the layer's latent grid (bilinear)."""
    h, w = latent_grid(tokens, original_shape)
    if mask.shape[-2:] != (h, w):
        mask = F.interpolate(mask[:, None], size=(h, w), mode="bilinear")[:, 0]  # (M, h, w)
    return rearrange(mask, "m h w -> m (h w) 1")


class FrameData:
    """The per-frame data of one adapter application, one object shared by the branches of all its layers:

    - ``tokens`` (P + Pu, N, C): the image tokens of P frames for cond rows, then Pu for uncond rows (Pu = 1 when
      every frame has the same negative, as with the default one), or None when all rows share one token set
      (the branches then hold that set's K'/V');
    - ``mask`` (M, H, W) in [0, 1], or None; ``weights`` (F,) per-frame multipliers, or None.

    Immutable, and shared by ``copy.deepcopy`` (the host's clone). Caches, not state: one copy on the compute
    device and dtype for every layer, the masks resized per layer grid, and the current call's token rows."""

    def __init__(self, tokens=None, cond_sets: int = 0, mask=None, weights=None):
        self.tokens, self.cond_sets, self.mask, self.weights = tokens, cond_sets, mask, weights
        self._placed = None  # ((device, dtype), tokens, weights, {layer grid: mask})
        self._call = None  # ((rows, device, dtype), tokens of the call's distinct sets, row -> set index or None)

    def __deepcopy__(self, memo):
        return self

    @property
    def token_bytes(self) -> int:
        return 0 if self.tokens is None else self.tokens.nbytes

    def _on(self, device, dtype):
        key = (device, dtype)
        if self._placed is None or self._placed[0] != key:
            tokens = None if self.tokens is None else self.tokens.to(device=device, dtype=dtype)
            weights = None if self.weights is None else self.weights.to(device=device, dtype=dtype)
            self._placed, self._call = (key, tokens, weights, {}), None
        return self._placed

    def row_weights(self, rows: CallRows, device, dtype) -> torch.Tensor:
        """(B, 1, 1): each row's frame weight."""
        weights = self._on(device, dtype)[2]
        return chunk_rows(weights, weights, rows)[:, None, None]

    def row_mask(self, rows: CallRows, tokens: int, original_shape, device, dtype) -> torch.Tensor:
        """(B, L, 1): each row's mask on this layer's grid (resized once per grid, for all layers)."""
        masks = self._on(device, dtype)[3]
        grid = (tokens, None if original_shape is None else tuple(original_shape[-2:]))
        if grid not in masks:
            masks[grid] = layer_mask(self.mask.to(device=device, dtype=dtype), tokens, original_shape)
        return chunk_rows(masks[grid], masks[grid], rows)

    def call_tokens(self, rows: CallRows, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The distinct token sets the rows of this call read, (U, N, C), and the index (B,) of each row's set
        among them (None when every row has its own); computed once per call and shared by every layer."""
        key = (rows, device, dtype)
        if self._call is None or self._call[0] != key:
            tokens = self._on(device, dtype)[1]
            uncond_sets = tokens.shape[0] - self.cond_sets
            ids = [self.cond_sets + min(f, uncond_sets - 1) if c == 1 else min(f, self.cond_sets - 1)
                   for c in rows.chunks for f in rows.frame_list()]
            distinct = list(dict.fromkeys(ids))
            chosen = tokens.index_select(0, long_tensor(distinct, tokens.device))
            position = {set_id: i for i, set_id in enumerate(distinct)}
            inverse = None if len(distinct) == len(ids) else long_tensor((position[i] for i in ids), tokens.device)
            self._call = (key, chosen, inverse)
        return self._call[1], self._call[2]
