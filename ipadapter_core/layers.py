"""Where each IP-Adapter layer lives in the host UNet.

An official weight file numbers its cross-attention layers N = 1, 3, 5, ...: the position of that cross-attention
among all attention processors of the diffusers UNet (self- and cross-attention interleaved), in the order down
blocks, up blocks, middle block last. The host addresses the same layer by ``(block_name, block_id,
transformer_index)``. This module is the only place where the two numberings meet.
"""
from dataclasses import dataclass

HostKey = tuple[str, int, int]


@dataclass(frozen=True)
class LayerSite:
    n: int  # the layer number in the weight file
    key: HostKey  # the host's attn2 patch key
    width: int  # the layer's query width in the full-size model


# (block_name, block_id, transformers in the block, width), in the weight file's order.
_SD15_BLOCKS = (
    ("input", 1, 1, 320), ("input", 2, 1, 320),
    ("input", 4, 1, 640), ("input", 5, 1, 640),
    ("input", 7, 1, 1280), ("input", 8, 1, 1280),
    ("output", 3, 1, 1280), ("output", 4, 1, 1280), ("output", 5, 1, 1280),
    ("output", 6, 1, 640), ("output", 7, 1, 640), ("output", 8, 1, 640),
    ("output", 9, 1, 320), ("output", 10, 1, 320), ("output", 11, 1, 320),
    ("middle", 0, 1, 1280),
)
_SDXL_BLOCKS = (
    ("input", 4, 2, 640), ("input", 5, 2, 640),
    ("input", 7, 10, 1280), ("input", 8, 10, 1280),
    ("output", 0, 10, 1280), ("output", 1, 10, 1280), ("output", 2, 10, 1280),
    ("output", 3, 2, 640), ("output", 4, 2, 640), ("output", 5, 2, 640),
    ("middle", 0, 10, 1280),
)


def _sites(blocks) -> tuple[LayerSite, ...]:
    keys = [(name, block_id, index, width)
            for name, block_id, count, width in blocks for index in range(count)]
    return tuple(LayerSite(n=2 * i + 1, key=(name, block_id, index), width=width)
                 for i, (name, block_id, index, width) in enumerate(keys))


# UNet family -> its IP-Adapter layers, in file order.
LAYOUTS: dict[str, tuple[LayerSite, ...]] = {
    "sd15": _sites(_SD15_BLOCKS),
    "sdxl": _sites(_SDXL_BLOCKS),
}

# Display names and the text-encoder width of the full-size models, for messages.
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}
FAMILY_CONTEXT_DIM = {"sd15": 768, "sdxl": 2048}


def family_for_layers(numbers) -> str | None:
    """The UNet family whose layer numbers are exactly ``numbers``, or None."""
    wanted = set(numbers)
    for family, sites in LAYOUTS.items():
        if wanted == {site.n for site in sites}:
            return family
    return None
