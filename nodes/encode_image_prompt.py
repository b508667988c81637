"""Encode Image Prompt: CLIP vision + reference image(s) -> IMAGE_PROMPT."""
from ..host import vision
from ..ipadapter_core import FIT_MODES, choice, finite_number
from ..ipadapter_core.image_ops import INTERPOLATIONS
from .sockets import CATEGORY, ImagePrompt, io, verdict


class EncodeImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EncodeImagePrompt", display_name="Encode Image Prompt", category=CATEGORY,
            description="Encodes reference images with a CLIP vision model into an image prompt that any "
                        "IP-Adapter trained on that encoder can use (base, plus, full-face). A batch of images "
                        "is one prompt.",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="The encoder the adapter was trained on: OpenCLIP "
                                    "ViT-H/14 for most, ViT-bigG/14 for ip-adapter_sdxl and ip-adapter_sd15_vit-G."),
                io.Image.Input("image", tooltip="One or more reference images; several are used together."),
                io.Image.Input("negative_image", optional=True, tooltip="Replaces the default negative (zero "
                               "embedding / mean-grey image) of the CFG uncond pass."),
                io.Combo.Input("fit", options=list(FIT_MODES), default="center crop", optional=True, tooltip=(
                    "How a non-square image becomes the encoder's square: crop (centre or an end of the long "
                    "side), pad with the encoder's mean colour, or squash.")),
                io.Int.Input("batch_size", default=8, min=1, max=vision.MAX_BATCH, optional=True, tooltip=(
                    "Images encoded at once; memory for activations stays flat however many frames are "
                    "encoded.")),
                io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="bicubic", optional=True,
                               tooltip="How images are resized to the encoder's input (bicubic: the host's own "
                                       "resize)."),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05, optional=True, tooltip=(
                    "Contrast-adaptive sharpening after the resize (0: none).")),
            ],
            outputs=[ImagePrompt.Output(display_name="image_prompt", tooltip=(
                "Pooled embeddings and hidden states of the images and of their negative."))])

    @classmethod
    def validate_inputs(cls, fit=None, batch_size=None, interpolation=None, sharpening=None):
        checks = [] if fit is None else [lambda: choice("fit", fit, FIT_MODES)]
        if batch_size is not None:
            checks.append(lambda: vision.check_batch_size(batch_size))
        if interpolation is not None:
            checks.append(lambda: choice("interpolation", interpolation, INTERPOLATIONS))
        if sharpening is not None:
            checks.append(lambda: finite_number("sharpening", sharpening, 0.0, 1.0))
        return verdict(*checks)

    @classmethod
    def execute(cls, clip_vision, image, negative_image=None, fit="center crop", batch_size=8,
                interpolation="bicubic", sharpening=0.0):
        return io.NodeOutput(vision.encode_image_prompt(clip_vision, image, negative_image, fit, batch_size,
                                                        interpolation, sharpening))


class EncodeImagePromptTiled(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EncodeImagePromptTiled", display_name="Encode Image Prompt (Tiled)", category=CATEGORY,
            description="Encodes a reference far from square without cropping it: 'tiles' cuts it into square "
                        "tiles, each acting on its own part of the picture (Apply IP-Adapter reads the tiles' "
                        "regions from the prompt); 'enhancer' blends the full image's patch tokens with those of its "
                        "tiles, for more detail.",
            inputs=[
                io.ClipVision.Input("clip_vision"),
                io.Image.Input("image", tooltip="The reference image(s)."),
                io.Image.Input("negative_image", optional=True, tooltip="Replaces the default negative."),
                io.Combo.Input("tile_mode", options=list(vision.TILE_MODES), default="tiles", tooltip=(
                    "tiles: one image prompt per tile, masked to its region; enhancer: the full image's features "
                    "blended with its tiles'.")),
                io.Float.Input("enhance_ratio", default=1.0, min=0.0, max=1.0, step=0.05, tooltip=(
                    "enhancer: the full image's share (1: the full image only, 0: the tiles' only).")),
                io.Int.Input("enhance_tiles", default=2, min=2, max=vision.MAX_ENHANCE_TILES, tooltip=(
                    "enhancer: tiles per side.")),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Contrast-adaptive sharpening of the tiles (0: none)."),
                io.Int.Input("batch_size", default=8, min=1, max=vision.MAX_BATCH, tooltip="Images encoded at once."),
            ],
            outputs=[ImagePrompt.Output(display_name="image_prompt", tooltip="One image per tile, with its region."),
                     io.Mask.Output(display_name="masks", tooltip="Each tile's region of the picture."),
                     io.Image.Output(display_name="tiles", tooltip="The tiles that were encoded.")])

    @classmethod
    def validate_inputs(cls, tile_mode=None, enhance_ratio=None, enhance_tiles=None, sharpening=None,
                        batch_size=None):
        checks = [] if tile_mode is None else [lambda: choice("tile_mode", tile_mode, vision.TILE_MODES)]
        for name, value in (("enhance_ratio", enhance_ratio), ("sharpening", sharpening)):
            if value is not None:
                checks.append(lambda n=name, v=value: finite_number(n, v, 0.0, 1.0))
        if enhance_tiles is not None:
            checks.append(lambda: vision.check_tiled("tiles", 1.0, enhance_tiles))
        if batch_size is not None:
            checks.append(lambda: vision.check_batch_size(batch_size))
        return verdict(*checks)

    @classmethod
    def execute(cls, clip_vision, image, tile_mode, enhance_ratio, enhance_tiles, sharpening, batch_size,
                negative_image=None):
        out = vision.encode_tiled(clip_vision, image, negative_image, tile_mode, enhance_ratio, enhance_tiles,
                                  sharpening, batch_size)
        return io.NodeOutput(out.prompt, out.masks, out.tiles)
