"""Writes the workflows in ``workflows/`` through ComfyUI's own front-end, so that they are saved exactly as the
front-end saves a graph: each is built node by node with LiteGraph in headless Chromium (widget values set by
name, links by socket), then serialised with ``app.graph.serialize()``.

    python tools/build_workflows.py http://127.0.0.1:8188/ workflows/ [NAME ...]

needs a running ComfyUI with this extension installed, Playwright and Debian's ``chromium``. Workflows written
by hand or saved from the canvas are equally welcome in ``workflows/``: the tests check every file there.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path
from playwright.sync_api import sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
VITH = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
CN = "control_v11p_sd15_canny_fp16.safetensors"


def files_md(*lines):
    return "\n".join(f"- `{l}`" for l in lines)


def base_graph(ckpt, adapter, weight, text, negative, size, note, prefix, latent="empty", extra_nodes=(), extra_links=()):
    nodes = [
        dict(id="note", type="MarkdownNote", col=0, widgets={"text": note}, size=[420, 300]),
        dict(id="ckpt", type="CheckpointLoaderSimple", col=0, widgets={"ckpt_name": ckpt}),
        dict(id="clipvision", type="CLIPVisionLoader", col=0, widgets={"clip_name": VITH}),
        dict(id="ref", type="LoadImage", col=0, widgets={"image": "example.png"}, size=[320, 380]),
        dict(id="ipadapter", type="LoadIPAdapter", col=1, widgets={"ipadapter_name": adapter}),
        dict(id="encode", type="EncodeImagePrompt", col=1),
        dict(id="apply", type="ApplyIPAdapter", col=1, widgets={"weight": weight, "start_at": 0.0, "end_at": 1.0}),
        dict(id="pos", type="CLIPTextEncode", col=2, widgets={"text": text}, title="Positive prompt", size=[400, 160]),
        dict(id="neg", type="CLIPTextEncode", col=2, widgets={"text": negative}, title="Negative prompt", size=[400, 160]),
        dict(id="sampler", type="KSampler", col=3, widgets={"seed": 42, "control_after_generate": "fixed",
             "steps": 30, "cfg": 7.5 if ckpt == SD15 else 6.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
             "denoise": 1.0}),
        dict(id="decode", type="VAEDecode", col=3),
        dict(id="save", type="SaveImage", col=4, widgets={"filename_prefix": prefix}, size=[420, 460]),
    ]
    if latent == "empty":
        nodes.append(dict(id="latent", type="EmptyLatentImage", col=2, widgets={"width": size, "height": size, "batch_size": 1}))
    links = [
        ("ckpt", "MODEL", "apply", "model"), ("ipadapter", "IPADAPTER", "apply", "ipadapter"),
        ("clipvision", "CLIP_VISION", "encode", "clip_vision"), ("ref", "IMAGE", "encode", "image"),
        ("encode", "IMAGE_PROMPT", "apply", "image_prompt"),
        ("ckpt", "CLIP", "pos", "clip"), ("ckpt", "CLIP", "neg", "clip"),
        ("apply", "MODEL", "sampler", "model"), ("pos", "CONDITIONING", "sampler", "positive"),
        ("neg", "CONDITIONING", "sampler", "negative"),
        ("sampler", "LATENT", "decode", "samples"), ("ckpt", "VAE", "decode", "vae"), ("decode", "IMAGE", "save", "images"),
    ]
    if latent == "empty":
        links.append(("latent", "LATENT", "sampler", "latent_image"))
    return nodes + list(extra_nodes), links + list(extra_links)


def replace_link(links, old_from, new_from):
    return [new_from if l[2:] == old_from[2:] else l for l in links]


WORKFLOWS = {}

WORKFLOWS["image_variation"] = base_graph(SD15, "ip-adapter_sd15.safetensors", 1.0, "", "", 512, f"""## Image variation

Variations of the reference image: the image prompt alone (empty text prompt, weight λ = 1), as in the IP-Adapter paper.
Put your picture in **Load Image**.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/ip-adapter_sd15.safetensors")}
""", "ipadapter/image_variation")

WORKFLOWS["image_and_text"] = base_graph(SD15, "ip-adapter_sd15.safetensors", 0.5,
    "best quality, wearing a hat, on a snowy street", "blurry, low quality", 512, f"""## Image + text prompt

Multimodal prompt: the reference image gives the subject and look, the text changes it. With weight λ ≈ 0.5 both are
followed; raise it for more of the image, lower it for more of the text.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/ip-adapter_sd15.safetensors")}
""", "ipadapter/image_and_text")

n, l = base_graph(SD15, "ip-adapter_sd15.safetensors", 0.8, "best quality", "blurry, low quality", 512, f"""## Image prompt + ControlNet

The reference image gives the content and style, a ControlNet gives the structure: Canny edges of the second image
(**Load Image (structure)**) steer the layout. The conditioning goes through **Apply ControlNet** on its way to the sampler.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/ip-adapter_sd15.safetensors", "models/controlnet/" + CN)}
""", "ipadapter/controlnet",
    extra_nodes=[
        dict(id="structure", type="LoadImage", col=1, widgets={"image": "example_scene.png"}, title="Load Image (structure)", size=[320, 380]),
        dict(id="canny", type="Canny", col=2, widgets={"low_threshold": 0.4, "high_threshold": 0.8}),
        dict(id="cnload", type="ControlNetLoader", col=2, widgets={"control_net_name": CN}),
        dict(id="cnapply", type="ControlNetApplyAdvanced", col=3, widgets={"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}),
    ])
l = [x for x in l if x[2] != "sampler" or x[3] not in ("positive", "negative")]
l += [("structure", "IMAGE", "canny", "image"), ("canny", "IMAGE", "cnapply", "image"),
      ("cnload", "CONTROL_NET", "cnapply", "control_net"), ("pos", "CONDITIONING", "cnapply", "positive"),
      ("neg", "CONDITIONING", "cnapply", "negative"), ("ckpt", "VAE", "cnapply", "vae"),
      ("cnapply", 0, "sampler", "positive"), ("cnapply", 1, "sampler", "negative")]
WORKFLOWS["controlnet"] = (n, l)

n, l = base_graph(SD15, "ip-adapter_sd15.safetensors", 0.8, "best quality", "blurry, low quality", 512, f"""## img2img with an image prompt

Redraws **Load Image (source)** towards the reference image: the source is encoded to latents and partly noised
(KSampler `denoise` 0.6: lower keeps more of the source).

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/ip-adapter_sd15.safetensors")}
""", "ipadapter/img2img", latent="source",
    extra_nodes=[
        dict(id="source", type="LoadImage", col=1, widgets={"image": "example_scene.png"}, title="Load Image (source)", size=[320, 380]),
        dict(id="vaeenc", type="VAEEncode", col=2),
    ],
    extra_links=[("source", "IMAGE", "vaeenc", "pixels"), ("ckpt", "VAE", "vaeenc", "vae"), ("vaeenc", "LATENT", "sampler", "latent_image")])
for x in n:
    if x["id"] == "sampler": x["widgets"]["denoise"] = 0.6
WORKFLOWS["img2img"] = (n, l)

n, l = base_graph(SD15, "ip-adapter_sd15.safetensors", 0.8, "best quality", "blurry, low quality", 512, f"""## Inpainting with an image prompt

Fills the masked part of **Load Image (source)** with content from the reference image. The mask is the image's
alpha channel: paint it in the mask editor (right click on the image, *Open in MaskEditor*). The rest of the
image is kept.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/ip-adapter_sd15.safetensors")}
""", "ipadapter/inpainting", latent="source",
    extra_nodes=[
        dict(id="source", type="LoadImage", col=1, widgets={"image": "example_scene.png"}, title="Load Image (source)", size=[320, 380]),
        dict(id="vaeenc", type="VAEEncode", col=2),
        dict(id="mask", type="SetLatentNoiseMask", col=2),
    ],
    extra_links=[("source", "IMAGE", "vaeenc", "pixels"), ("ckpt", "VAE", "vaeenc", "vae"),
                 ("vaeenc", "LATENT", "mask", "samples"), ("source", "MASK", "mask", "mask"),
                 ("mask", "LATENT", "sampler", "latent_image")])
WORKFLOWS["inpainting"] = (n, l)

n, l = base_graph(SD15, "ip-adapter-plus_sd15.safetensors", 0.8, "best quality", "blurry, low quality", 512, f"""## Two adapters stacked

A plus adapter (16 tokens, fine detail) carries the subject of the first reference image; a base adapter carries
the style of the second (**Load Image (style)**) at a lower weight. The two **Apply IP-Adapter** nodes are chained:
their image branches add up. Both images share one CLIP vision encoder.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/ip-adapter-plus_sd15.safetensors", "models/ipadapter/ip-adapter_sd15.safetensors")}
""", "ipadapter/two_adapters",
    extra_nodes=[
        dict(id="style", type="LoadImage", col=1, widgets={"image": "example_style.png"}, title="Load Image (style)", size=[320, 380]),
        dict(id="ipadapter2", type="LoadIPAdapter", col=2, widgets={"ipadapter_name": "ip-adapter_sd15.safetensors"}),
        dict(id="encode2", type="EncodeImagePrompt", col=2),
        dict(id="apply2", type="ApplyIPAdapter", col=2, widgets={"weight": 0.5, "start_at": 0.0, "end_at": 1.0}, title="Apply IP-Adapter (style)"),
    ])
for x in n:
    if x["id"] == "apply": x["title"] = "Apply IP-Adapter (subject)"
    if x["id"] == "ref": x["title"] = "Load Image (subject)"
l = [x for x in l if not (x[2] == "sampler" and x[3] == "model")]
l += [("style", "IMAGE", "encode2", "image"), ("clipvision", "CLIP_VISION", "encode2", "clip_vision"),
      ("apply", "MODEL", "apply2", "model"), ("ipadapter2", "IPADAPTER", "apply2", "ipadapter"),
      ("encode2", "IMAGE_PROMPT", "apply2", "image_prompt"), ("apply2", "MODEL", "sampler", "model")]
WORKFLOWS["two_adapters"] = (n, l)

WORKFLOWS["sdxl_vit_h"] = base_graph(SDXL, "ip-adapter_sdxl_vit-h.safetensors", 0.7, "best quality", "blurry, low quality", 1024, f"""## SDXL with a ViT-H adapter

SDXL image prompt with `ip-adapter_sdxl_vit-h`, which reads the same ViT-H/14 encoder as the SD1.5 adapters
(`ip-adapter_sdxl` needs ViT-bigG/14 instead). 1024 × 1024.

Model files:
{files_md("models/checkpoints/" + SDXL, "models/clip_vision/" + VITH, "models/ipadapter/ip-adapter_sdxl_vit-h.safetensors")}
""", "ipadapter/sdxl_vit_h")

# ------------------------------------------------------------------------------------------- controls
PLUS15 = "ip-adapter-plus_sd15.safetensors"
BASE15 = "ip-adapter_sd15.safetensors"


def control_graph(adapter, note, prefix, apply_type="ApplyIPAdapter", apply_widgets=None, encode_widgets=None,
                  image="example.png", batch=1, text="best quality", extra_nodes=(), extra_links=(), encoder=True):
    """The SD1.5 image-prompt graph of the control workflows: one adapter, one Apply node, text, sampler, save."""
    nodes, links = base_graph(SD15, adapter, 1.0, text, "blurry, low quality", 512, note, prefix)
    for x in nodes:
        if x["id"] == "apply":
            x["type"] = apply_type
            x["widgets"] = {"weight": 1.0, "start_at": 0.0, "end_at": 1.0, **(apply_widgets or {})}
        if x["id"] == "encode" and encode_widgets:
            x["widgets"] = dict(encode_widgets)
        if x["id"] == "ref":
            x["widgets"] = {"image": image}
        if x["id"] == "latent":
            x["widgets"]["batch_size"] = batch
    if not encoder:
        nodes = [x for x in nodes if x["id"] not in ("clipvision", "ref", "encode")]
        links = [l for l in links if l[0] not in ("clipvision", "ref", "encode")]
    return nodes + list(extra_nodes), links + list(extra_links)


WORKFLOWS["style_transfer"] = control_graph(PLUS15, f"""## Style transfer (per-layer weights)

The reference image's style without its layout: **Apply IP-Adapter (Advanced)** with the `style transfer` preset puts
the image prompt on the style layers only (SDXL: output block 1, as InstantStyle; SD1.5: input 1, 2, 4, 5 and output
5–11). Also try `composition`, `style and composition` (with `composition_weight`), the `ease` curves over depth, or
`custom` with entries like `output 1=1.0, input 8=0.5`; `weight_curve` shapes the weight between start_at and end_at.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + PLUS15)}
""", "ipadapter/style_transfer", "ApplyIPAdapterAdvanced",
    {"layer_weights": "style transfer", "weight_curve": "constant"}, text="a cat sitting on a chair, best quality")

n, l = control_graph(BASE15, f"""## Regional image prompts (attention masks)

Two image prompts, each confined to one half of the picture by `attn_mask`: the first reference acts on the left, the
second (**Load Image (right)**) on the right. The masks here come from **Solid Mask**, **Mask Composite** and **Invert
Mask**; any MASK works, for example one painted in the mask editor. Each mask is resized to every layer's latent grid.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/regional_masks", extra_nodes=[
    dict(id="ref2", type="LoadImage", col=1, widgets={"image": "example_style.png"}, title="Load Image (right)",
         size=[320, 380]),
    dict(id="encode2", type="EncodeImagePrompt", col=1),
    dict(id="blank", type="SolidMask", col=0, widgets={"value": 0.0, "width": 512, "height": 512}),
    dict(id="half", type="SolidMask", col=0, widgets={"value": 1.0, "width": 256, "height": 512}),
    dict(id="left", type="MaskComposite", col=1, widgets={"x": 0, "y": 0, "operation": "add"}),
    dict(id="right", type="InvertMask", col=1),
    dict(id="apply2", type="ApplyIPAdapter", col=2, widgets={"weight": 1.0, "start_at": 0.0, "end_at": 1.0},
         title="Apply IP-Adapter (right)"),
])
for x in n:
    if x["id"] == "apply": x["title"] = "Apply IP-Adapter (left)"
l = [x for x in l if not (x[2] == "sampler" and x[3] == "model")]
l += [("ref2", "IMAGE", "encode2", "image"), ("clipvision", "CLIP_VISION", "encode2", "clip_vision"),
      ("blank", "MASK", "left", "destination"), ("half", "MASK", "left", "source"), ("left", "MASK", "right", "mask"),
      ("left", "MASK", "apply", "attn_mask"), ("apply", "MODEL", "apply2", "model"),
      ("ipadapter", "IPADAPTER", "apply2", "ipadapter"), ("encode2", "IMAGE_PROMPT", "apply2", "image_prompt"),
      ("right", "MASK", "apply2", "attn_mask"), ("apply2", "MODEL", "sampler", "model")]
WORKFLOWS["regional_masks"] = (n, l)

n, l = control_graph(BASE15, f"""## Several reference images (Combine Image Prompts)

Two references merged into one image prompt by **Combine Image Prompts**: `weighted average` (one weight per image in
`weights`, here `1.0, 0.5`), `average` (mean features) or `concat` (every image's tokens side by side).

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/combine_images", extra_nodes=[
    dict(id="ref2", type="LoadImage", col=1, widgets={"image": "example_style.png"}, title="Load Image (second)",
         size=[320, 380]),
    dict(id="encode2", type="EncodeImagePrompt", col=1),
    dict(id="combine", type="CombineImagePrompts", col=2, widgets={"method": "weighted average", "weights": "1.0, 0.5"}),
])
l = [x for x in l if x[2:] != ("apply", "image_prompt")]
l += [("ref2", "IMAGE", "encode2", "image"), ("clipvision", "CLIP_VISION", "encode2", "clip_vision"),
      ("encode", "IMAGE_PROMPT", "combine", "image_prompt"), ("encode2", "IMAGE_PROMPT", "combine", "image_prompt_2"),
      ("combine", "IMAGE_PROMPT", "apply", "image_prompt")]
WORKFLOWS["combine_images"] = (n, l)

WORKFLOWS["noise_negative"] = control_graph(PLUS15, f"""## Noise negative image

**Image Prompt Noise** degrades the reference towards noise and feeds it to `negative_image`: CFG's uncond pass then
steers away from a noisy copy of the reference instead of the default (mean grey), which often gives cleaner, less
over-saturated results. Kinds: fade, dissolve, gaussian, shuffle.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + PLUS15)}
""", "ipadapter/noise_negative", extra_nodes=[
    dict(id="noise", type="ImagePromptNoise", col=1,
         widgets={"kind": "fade", "strength": 0.6, "seed": 0, "control_after_generate": "fixed"}),
], extra_links=[("ref", "IMAGE", "noise", "image"), ("noise", "IMAGE", "encode", "negative_image")])

n, l = control_graph(BASE15, f"""## Batch unfold (one reference per frame)

A batch of reference images (two here, joined by **Batch Images**) and a batch of as many latents: with
`unfold_batch` on, image i conditions latent i, as for animation frames (with more latents than images the last
image repeats). Encode Image Prompt's `batch_size` keeps memory flat for long frame sequences.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/batch_unfold", "ApplyIPAdapterAdvanced", {"unfold_batch": True}, batch=2, extra_nodes=[
    dict(id="ref2", type="LoadImage", col=0, widgets={"image": "example_style.png"}, title="Load Image (frame 2)",
         size=[320, 380]),
    dict(id="batch", type="ImageBatch", col=1),
])
l = [x for x in l if x[2:] != ("encode", "image")]
l += [("ref", "IMAGE", "batch", "image1"), ("ref2", "IMAGE", "batch", "image2"), ("batch", "IMAGE", "encode", "image")]
WORKFLOWS["batch_unfold"] = (n, l)

WORKFLOWS["non_square_fit"] = control_graph(BASE15, f"""## Non-square reference (fit)

Encode Image Prompt's `fit` decides what a non-square reference becomes before the encoder's square input: `pad` keeps
the whole picture (padded with the encoder's mean colour), `center crop`, `top/left crop` and `bottom/right crop` keep
a square of the short side, `squash` resizes without keeping the aspect ratio.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/non_square_fit", encode_widgets={"fit": "pad", "batch_size": 8}, image="example_wide.png")

WORKFLOWS["save_image_prompt"] = control_graph(BASE15, f"""## Save an image prompt

**Save Image Prompt** writes the encoded image prompt to `output/image_prompts/`, so that an expensive encode (many
frames, a large encoder) is done once; **Load Image Prompt** reads it back bit for bit (workflow
`load_image_prompt`).

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/save_image_prompt", extra_nodes=[
    dict(id="saveprompt", type="SaveImagePrompt", col=2, widgets={"filename_prefix": "example_prompt"}),
], extra_links=[("encode", "IMAGE_PROMPT", "saveprompt", "image_prompt")])

WORKFLOWS["load_image_prompt"] = control_graph(BASE15, f"""## Load a saved image prompt

**Load Image Prompt** reuses an image prompt saved by Save Image Prompt (from `output/image_prompts/`, or a file put
in `input/image_prompts/`): no CLIP vision model and no encode, and the same output as the original prompt.

Model files:
{files_md("models/checkpoints/" + SD15, "models/ipadapter/" + BASE15, "input/image_prompts/example_prompt.safetensors")}
""", "ipadapter/load_image_prompt", encoder=False, extra_nodes=[
    dict(id="loadprompt", type="LoadImagePrompt", col=1,
         widgets={"prompt_file": "image_prompts/example_prompt.safetensors"}),
], extra_links=[("loadprompt", "IMAGE_PROMPT", "apply", "image_prompt")])

WORKFLOWS["style_transfer_precise"] = control_graph(PLUS15, f"""## Precise style transfer (ComfyUI_IPAdapter_plus weight types)

**Apply IP-Adapter (Advanced)** with `style transfer precise`: the reference on the style layers, and on the
composition layers its tokens go to CFG's uncond pass instead (the cond pass gets none there), so the picture keeps the
reference's style and moves away from its layout. The other weight types of ComfyUI_IPAdapter_plus are presets too:
`ease in (incumbent)`, `reverse in-out`, `weak input`, `weak middle`, `weak output`, `strong middle`,
`strong style transfer`, `composition precise`, ...

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + PLUS15)}
""", "ipadapter/style_transfer_precise", "ApplyIPAdapterAdvanced",
    {"layer_weights": "style transfer precise", "weight_curve": "constant"}, text="a cat sitting on a chair, best quality")

WORKFLOWS["embeds_scaling"] = control_graph(PLUS15, f"""## Embeds scaling

**Apply IP-Adapter (Advanced)**'s `embeds_scaling` says where the weight acts: `V only` (the image branch's output,
the default), `K+V` (its keys and values), `K+V w/ C penalty` (the same, times the layer width / 1280: the narrow
layers get less) or `K+mean(V) w/ C penalty` (keys, and the mean of the values), as in ComfyUI_IPAdapter_plus. Here:
`K+V w/ C penalty` at weight 1.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + PLUS15)}
""", "ipadapter/embeds_scaling", "ApplyIPAdapterAdvanced",
    {"layer_weights": "linear", "weight_curve": "constant", "embeds_scaling": "K+V w/ C penalty"})

n, l = control_graph(BASE15, f"""## Subtracting a reference (Combine Image Prompts)

**Combine Image Prompts** with `subtract`: the first reference's features minus the mean of the others (here the
second, **Load Image (subtract)**), for "this, but less of that". Also `add`, `norm average`, `max` and `min`, as in
ComfyUI_IPAdapter_plus, beside `concat`, `average` and `weighted average`.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/combine_subtract", extra_nodes=[
    dict(id="ref2", type="LoadImage", col=1, widgets={"image": "example_style.png"}, title="Load Image (subtract)",
         size=[320, 380]),
    dict(id="encode2", type="EncodeImagePrompt", col=1),
    dict(id="combine", type="CombineImagePrompts", col=2, widgets={"method": "subtract", "weights": ""}),
])
l = [x for x in l if x[2:] != ("apply", "image_prompt")]
l += [("ref2", "IMAGE", "encode2", "image"), ("clipvision", "CLIP_VISION", "encode2", "clip_vision"),
      ("encode", "IMAGE_PROMPT", "combine", "image_prompt"), ("encode2", "IMAGE_PROMPT", "combine", "image_prompt_2"),
      ("combine", "IMAGE_PROMPT", "apply", "image_prompt")]
WORKFLOWS["combine_subtract"] = (n, l)

n, l = control_graph(PLUS15, f"""## Style and composition from two images

**Apply IP-Adapter (Style & Composition)**: the style of **Load Image (style)** on the style layers and the layout of
**Load Image** (composition) on the composition layers, each with its own weight. `expand_style` puts the style image
on every layer but the composition ones.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + PLUS15)}
""", "ipadapter/style_composition", extra_nodes=[
    dict(id="ref2", type="LoadImage", col=1, widgets={"image": "example_style.png"}, title="Load Image (style)",
         size=[320, 380]),
    dict(id="encode2", type="EncodeImagePrompt", col=1),
])
for x in n:
    if x["id"] == "apply":
        x["type"] = "ApplyIPAdapterStyleComposition"
        x["widgets"] = {"weight_style": 1.0, "weight_composition": 0.8, "expand_style": False, "start_at": 0.0,
                        "end_at": 1.0, "embeds_scaling": "V only"}
l = [x for x in l if x[2:] != ("apply", "image_prompt")]
l += [("ref2", "IMAGE", "encode2", "image"), ("clipvision", "CLIP_VISION", "encode2", "clip_vision"),
      ("encode2", "IMAGE_PROMPT", "apply", "image_prompt_style"),
      ("encode", "IMAGE_PROMPT", "apply", "image_prompt_composition")]
WORKFLOWS["style_composition"] = (n, l)

WORKFLOWS["encode_sharpening"] = control_graph(BASE15, f"""## Interpolation and sharpening before the encoder

Encode Image Prompt's `interpolation` resizes the reference to the encoder's input with another filter (`lanczos`
here; `bicubic` is the host's own resize) and `sharpening` applies contrast-adaptive sharpening after it, as
ComfyUI_IPAdapter_plus's Prep Image For ClipVision does: fine detail survives the downscale better.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/encode_sharpening", encode_widgets={"fit": "center crop", "batch_size": 8, "interpolation": "lanczos",
                                                   "sharpening": 0.4})

n, l = control_graph(BASE15, f"""## Tiled reference (far from square)

**Encode Image Prompt (Tiled)** with `tiles`: the wide reference is resized to a short side of 256 and cut into
overlapping 256 x 256 tiles; each tile is one image of the prompt with its own region, and Apply IP-Adapter gives each
tile's tokens only to its part of the picture (the latent here has the reference's proportions). `masks` shows the
regions. As ComfyUI_IPAdapter_plus's IPAdapterTiled.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/tiled_reference", image="example_wide.png")
for x in n:
    if x["id"] == "encode":
        x["type"] = "EncodeImagePromptTiled"
        x["widgets"] = {"tile_mode": "tiles", "enhance_ratio": 1.0, "enhance_tiles": 2, "sharpening": 0.0,
                        "batch_size": 8}
    if x["id"] == "latent":
        x["widgets"].update(width=768, height=320)
WORKFLOWS["tiled_reference"] = (n, l)

n, l = control_graph(PLUS15, f"""## CLIP vision enhancer

**Encode Image Prompt (Tiled)** with `enhancer`: the reference is also encoded as 2 x 2 tiles, whose patch tokens,
pooled back to the encoder's grid, are blended with the full image's (`enhance_ratio` 0.5: half each): more detail
for plus adapters, which read the patch tokens. As ComfyUI_IPAdapter_plus's ClipVision Enhancer.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + PLUS15)}
""", "ipadapter/clipvision_enhancer")
for x in n:
    if x["id"] == "encode":
        x["type"] = "EncodeImagePromptTiled"
        x["widgets"] = {"tile_mode": "enhancer", "enhance_ratio": 0.5, "enhance_tiles": 2, "sharpening": 0.0,
                        "batch_size": 8}
WORKFLOWS["clipvision_enhancer"] = (n, l)

n, l = control_graph(BASE15, f"""## Regional prompts (image and text per region)

**IP-Adapter Regional Prompt**: the left half gets the first reference and the text "a red house", the right half
the second reference (**Load Image (right)**) and "a green tree"; the positive prompt applies to the whole picture.
Each image prompt acts only inside its mask, each text is masked the same way (the host's conditioning mask at
`prompt_weight`). Up to four regions; the masks here come from **Solid Mask**, **Mask Composite** and **Invert Mask**.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + BASE15)}
""", "ipadapter/regional_prompt", text="a garden, best quality", extra_nodes=[
    dict(id="ref2", type="LoadImage", col=1, widgets={"image": "example_style.png"}, title="Load Image (right)",
         size=[320, 380]),
    dict(id="encode2", type="EncodeImagePrompt", col=1),
    dict(id="blank", type="SolidMask", col=0, widgets={"value": 0.0, "width": 512, "height": 512}),
    dict(id="half", type="SolidMask", col=0, widgets={"value": 1.0, "width": 256, "height": 512}),
    dict(id="left", type="MaskComposite", col=1, widgets={"x": 0, "y": 0, "operation": "add"}),
    dict(id="right", type="InvertMask", col=1),
    dict(id="text1", type="CLIPTextEncode", col=2, widgets={"text": "a red house"}, title="Text (left)",
         size=[400, 120]),
    dict(id="text2", type="CLIPTextEncode", col=2, widgets={"text": "a green tree"}, title="Text (right)",
         size=[400, 120]),
])
for x in n:
    if x["id"] == "apply":
        x["type"] = "IPAdapterRegionalPrompt"
        x["widgets"] = {"weight": 1.0, "prompt_weight": 1.0, "start_at": 0.0, "end_at": 1.0,
                        "embeds_scaling": "V only"}
l = [x for x in l if x[2:] not in (("apply", "image_prompt"), ("sampler", "positive"), ("sampler", "negative"),
                                   ("sampler", "model"))]
l += [("ref2", "IMAGE", "encode2", "image"), ("clipvision", "CLIP_VISION", "encode2", "clip_vision"),
      ("blank", "MASK", "left", "destination"), ("half", "MASK", "left", "source"), ("left", "MASK", "right", "mask"),
      ("ckpt", "CLIP", "text1", "clip"), ("ckpt", "CLIP", "text2", "clip"),
      ("pos", "CONDITIONING", "apply", "positive"), ("neg", "CONDITIONING", "apply", "negative"),
      ("encode", "IMAGE_PROMPT", "apply", "image_prompt_1"), ("left", "MASK", "apply", "mask_1"),
      ("text1", "CONDITIONING", "apply", "text_1"),
      ("encode2", "IMAGE_PROMPT", "apply", "image_prompt_2"), ("right", "MASK", "apply", "mask_2"),
      ("text2", "CONDITIONING", "apply", "text_2"),
      ("apply", 0, "sampler", "model"), ("apply", 1, "sampler", "positive"), ("apply", 2, "sampler", "negative")]
WORKFLOWS["regional_prompt"] = (n, l)


def by_contents_graph():
    """Load IP-Adapter (by contents) in place of Load IP-Adapter + Load CLIP Vision: the files found by contents."""
    nodes, links = base_graph(SD15, PLUS15, 0.8, "best quality, a portrait", "blurry, low quality", 512, f"""## Files found by their contents

**Load IP-Adapter (by contents)** finds the adapter of the `plus` preset for this SD1.5 model in `models/ipadapter`
and its CLIP vision encoder in `models/clip_vision` by reading the files' keys and shapes: any file names work.
If nothing fits, its message lists every file with what it is.

Model files:
{files_md("models/checkpoints/" + SD15, "models/ipadapter/: an SD1.5 plus adapter, e.g. " + PLUS15,
          "models/clip_vision/: the OpenCLIP ViT-H/14 encoder, e.g. " + VITH)}
""", "ipadapter/by_contents")
    nodes = [n for n in nodes if n["id"] not in ("ipadapter", "clipvision")]
    nodes.insert(2, dict(id="loader", type="LoadIPAdapterByPreset", col=1, widgets={"preset": "plus"}))
    links = [l for l in links if l[0] not in ("ipadapter", "clipvision") and l[2:] != ("apply", "model")]
    links += [("ckpt", "MODEL", "loader", "model"), ("loader", 0, "apply", "model"),
              ("loader", 1, "apply", "ipadapter"), ("loader", 2, "encode", "clip_vision")]
    return nodes, links


WORKFLOWS["by_contents"] = by_contents_graph()

# ------------------------------------------------------------------------------------------- FaceID
FACEID_PLUSV2 = "ip-adapter-faceid-plusv2_sd15.bin"
FACE_PACK = "models/insightface/models/buffalo_l/ (det_10g.onnx, w600k_r50.onnx; the whole pack may stay)"


def faceid_graph(note, prefix, text="photo of a person in a garden, best quality"):
    """FaceID Plus v2 on SD1.5: Load Face Analysis + Encode Face Prompt (with the ViT-H/14 face crop) in place of
    Encode Image Prompt, Load IP-Adapter with faceid_variant 'plus v2'."""
    nodes, links = base_graph(SD15, FACEID_PLUSV2, 1.0, text, "blurry, low quality, deformed", 512, note, prefix)
    for x in nodes:
        if x["id"] == "encode":
            x["type"] = "EncodeFacePrompt"
            x["widgets"] = {"face": "largest", "face_index": 0, "max_faces": 1}
        if x["id"] == "ipadapter":
            x["widgets"] = {"ipadapter_name": FACEID_PLUSV2, "faceid_variant": "plus v2"}
        if x["id"] == "apply":
            x["widgets"] = {"weight": 1.0, "start_at": 0.0, "end_at": 1.0, "lora_strength": 1.0,
                            "shortcut_weight": 1.0}
        if x["id"] == "ref":
            x["widgets"] = {"image": "example_face.png"}
            x["title"] = "Load Image (face)"
    nodes.append(dict(id="faceanalysis", type="LoadFaceAnalysis", col=1,
                      widgets={"model_pack": "buffalo_l", "backend": "onnxruntime", "det_size": 640}))
    return nodes, links + [("faceanalysis", "FACE_ANALYSIS", "encode", "face_analysis")]


WORKFLOWS["faceid_plusv2_sd15"] = faceid_graph(f"""## FaceID Plus v2 (SD1.5)

The face of the reference photo in a new picture: Load Face Analysis finds the face (onnxruntime, no
insightface needed: `pip install -r requirements-faceid.txt`), Encode Face Prompt takes its ArcFace embedding and
the aligned face crop through CLIP vision, Apply IP-Adapter adds the face tokens and the LoRA inside the file
(`lora_strength`). `faceid_variant` is `plus v2`: Plus and Plus v2 files have the same contents.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + FACEID_PLUSV2, FACE_PACK)}
""", "ipadapter/faceid_plusv2")

n, l = faceid_graph(f"""## FaceID + a plus adapter for the style

FaceID Plus v2 keeps the face of the first image; `ip-adapter-plus_sd15`, chained after it at 0.5, brings the
look of the second. Two Apply nodes in a chain: both act.

Model files:
{files_md("models/checkpoints/" + SD15, "models/clip_vision/" + VITH, "models/ipadapter/" + FACEID_PLUSV2,
          "models/ipadapter/" + PLUS15, FACE_PACK)}
""", "ipadapter/faceid_and_style", text="portrait, oil painting, best quality")
n += [dict(id="style", type="LoadImage", col=0, widgets={"image": "example_style.png"}, title="Load Image (style)",
           size=[320, 380]),
      dict(id="ipadapter2", type="LoadIPAdapter", col=1, widgets={"ipadapter_name": PLUS15}),
      dict(id="encode2", type="EncodeImagePrompt", col=1),
      dict(id="apply2", type="ApplyIPAdapter", col=2, widgets={"weight": 0.5, "start_at": 0.0, "end_at": 1.0},
           title="Apply IP-Adapter (style)")]
l = [x for x in l if not (x[2] == "sampler" and x[3] == "model")]
l += [("style", "IMAGE", "encode2", "image"), ("clipvision", "CLIP_VISION", "encode2", "clip_vision"),
      ("apply", "MODEL", "apply2", "model"), ("ipadapter2", "IPADAPTER", "apply2", "ipadapter"),
      ("encode2", "IMAGE_PROMPT", "apply2", "image_prompt"), ("apply2", "MODEL", "sampler", "model")]
WORKFLOWS["faceid_and_style"] = (n, l)


FLUX_UNET, FLUX_T5, FLUX_CLIP_L, FLUX_VAE = ("flux1-dev.safetensors", "t5xxl_fp16.safetensors", "clip_l.safetensors",
                                          "ae.safetensors")
VITL = "clip-vit-large-patch14.safetensors"
XLABS = "flux-ip-adapter-v2.safetensors"
SIGLIP_POOLED, INSTANTX_FLUX = "siglip-so400m-patch14-384.safetensors", "ip-adapter-flux1-dev-instantx.bin"


def flux_graph(note, prefix, adapter=XLABS, encoder=VITL, encode=None, weight=0.8):
    """FLUX.1-dev with a Flux IP-Adapter: diffusion model, text encoders and VAE loaded on their own."""
    nodes = [
        dict(id="note", type="MarkdownNote", col=0, widgets={"text": note}, size=[420, 320]),
        dict(id="unet", type="UNETLoader", col=0, widgets={"unet_name": FLUX_UNET, "weight_dtype": "default"}),
        dict(id="clip", type="DualCLIPLoader", col=0, widgets={"clip_name1": FLUX_T5, "clip_name2": FLUX_CLIP_L,
                                                                "type": "flux"}),
        dict(id="vae", type="VAELoader", col=0, widgets={"vae_name": FLUX_VAE}),
        dict(id="clipvision", type="CLIPVisionLoader", col=0, widgets={"clip_name": encoder}),
        dict(id="ref", type="LoadImage", col=1, widgets={"image": "example.png"}, size=[320, 380]),
        dict(id="ipadapter", type="LoadIPAdapter", col=1, widgets={"ipadapter_name": adapter}),
        dict(id="encode", type="EncodeImagePrompt", col=1, **({"widgets": encode} if encode else {})),
        dict(id="apply", type="ApplyIPAdapter", col=2, widgets={"weight": weight, "start_at": 0.0, "end_at": 1.0}),
        dict(id="pos", type="CLIPTextEncode", col=2, widgets={"text": "a photo, best quality"},
             title="Positive prompt", size=[400, 160]),
        dict(id="neg", type="CLIPTextEncode", col=2, widgets={"text": ""}, title="Negative prompt (unused at cfg 1)",
             size=[400, 120]),
        dict(id="guidance", type="FluxGuidance", col=2, widgets={"guidance": 3.5}),
        dict(id="latent", type="EmptySD3LatentImage", col=2, widgets={"width": 1024, "height": 1024, "batch_size": 1}),
        dict(id="sampler", type="KSampler", col=3, widgets={"seed": 42, "control_after_generate": "fixed",
             "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}),
        dict(id="decode", type="VAEDecode", col=3),
        dict(id="save", type="SaveImage", col=4, widgets={"filename_prefix": prefix}, size=[420, 460]),
    ]
    links = [
        ("unet", "MODEL", "apply", "model"), ("ipadapter", "IPADAPTER", "apply", "ipadapter"),
        ("clipvision", "CLIP_VISION", "encode", "clip_vision"), ("ref", "IMAGE", "encode", "image"),
        ("encode", "IMAGE_PROMPT", "apply", "image_prompt"),
        ("clip", "CLIP", "pos", "clip"), ("clip", "CLIP", "neg", "clip"),
        ("pos", "CONDITIONING", "guidance", "conditioning"),
        ("apply", "MODEL", "sampler", "model"), ("guidance", "CONDITIONING", "sampler", "positive"),
        ("neg", "CONDITIONING", "sampler", "negative"), ("latent", "LATENT", "sampler", "latent_image"),
        ("sampler", "LATENT", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
        ("decode", "IMAGE", "save", "images"),
    ]
    return nodes, links


WORKFLOWS["flux_xlabs"] = flux_graph(f"""## FLUX.1-dev with an XLabs IP-Adapter

The reference image as an image prompt for FLUX.1-dev: the XLabs Flux IP-Adapter (v2, 16 tokens; v1 works the same)
reads the CLIP ViT-L/14 embedding of **Load Image** and adds its image branch to the 19 double blocks. Flux runs at
cfg 1 with **FluxGuidance** 3.5; weight 0.6 to 1.0 is the usual range.

Model files:
{files_md("models/diffusion_models/" + FLUX_UNET, "models/text_encoders/" + FLUX_T5,
          "models/text_encoders/" + FLUX_CLIP_L, "models/vae/" + FLUX_VAE, "models/clip_vision/" + VITL,
          "models/ipadapter/" + XLABS)}
""", "ipadapter/flux_xlabs")

WORKFLOWS["flux_instantx"] = flux_graph(f"""## FLUX.1-dev with the InstantX IP-Adapter

The reference image as an image prompt for FLUX.1-dev: SigLIP so400m-384 encodes **Load Image** (`fit` squash, as
InstantX resizes) and its pooling head gives the pooled embedding; the adapter turns it into 128 tokens and adds
their attention in all 57 blocks (19 double, 38 single). Flux runs at cfg 1 with **FluxGuidance** 3.5; weight 0.5
to 1.0 is the usual range.

The CLIP vision file must be the one with SigLIP's pooling head (google/siglip-so400m-patch14-384's
`model.safetensors`, renamed); the encoder finds the head in it by its contents.

Model files:
{files_md("models/diffusion_models/" + FLUX_UNET, "models/text_encoders/" + FLUX_T5,
          "models/text_encoders/" + FLUX_CLIP_L, "models/vae/" + FLUX_VAE, "models/clip_vision/" + SIGLIP_POOLED,
          "models/ipadapter/" + INSTANTX_FLUX)}
""", "ipadapter/flux_instantx", adapter=INSTANTX_FLUX, encoder=SIGLIP_POOLED,
    encode={"fit": "squash", "batch_size": 8}, weight=0.7)

SD35, CLIP_G, SIGLIP, INSTANTX_SD35 = ("sd3.5_large.safetensors", "clip_g.safetensors",
                                     "sigclip_vision_patch14_384.safetensors", "ip-adapter-sd3.5-large.bin")


def sd35_graph(note, prefix):
    """SD3.5 Large with the InstantX IP-Adapter: checkpoint (model, VAE), the three text encoders, SigLIP."""
    nodes = [
        dict(id="note", type="MarkdownNote", col=0, widgets={"text": note}, size=[420, 320]),
        dict(id="ckpt", type="CheckpointLoaderSimple", col=0, widgets={"ckpt_name": SD35}),
        dict(id="clip", type="TripleCLIPLoader", col=0, widgets={"clip_name1": FLUX_CLIP_L, "clip_name2": CLIP_G,
                                                                  "clip_name3": FLUX_T5}),
        dict(id="clipvision", type="CLIPVisionLoader", col=0, widgets={"clip_name": SIGLIP}),
        dict(id="ref", type="LoadImage", col=1, widgets={"image": "example.png"}, size=[320, 380]),
        dict(id="ipadapter", type="LoadIPAdapter", col=1, widgets={"ipadapter_name": INSTANTX_SD35}),
        dict(id="encode", type="EncodeImagePrompt", col=1, widgets={"fit": "squash", "batch_size": 8}),
        dict(id="apply", type="ApplyIPAdapter", col=2, widgets={"weight": 0.5, "start_at": 0.0, "end_at": 1.0}),
        dict(id="pos", type="CLIPTextEncode", col=2, widgets={"text": "a photo, best quality"},
             title="Positive prompt", size=[400, 160]),
        dict(id="neg", type="CLIPTextEncode", col=2, widgets={"text": "blurry, low quality"},
             title="Negative prompt", size=[400, 120]),
        dict(id="latent", type="EmptySD3LatentImage", col=2, widgets={"width": 1024, "height": 1024, "batch_size": 1}),
        dict(id="sampler", type="KSampler", col=3, widgets={"seed": 42, "control_after_generate": "fixed",
             "steps": 28, "cfg": 4.5, "sampler_name": "euler", "scheduler": "sgm_uniform", "denoise": 1.0}),
        dict(id="decode", type="VAEDecode", col=3),
        dict(id="save", type="SaveImage", col=4, widgets={"filename_prefix": prefix}, size=[420, 460]),
    ]
    links = [
        ("ckpt", "MODEL", "apply", "model"), ("ipadapter", "IPADAPTER", "apply", "ipadapter"),
        ("clipvision", "CLIP_VISION", "encode", "clip_vision"), ("ref", "IMAGE", "encode", "image"),
        ("encode", "IMAGE_PROMPT", "apply", "image_prompt"),
        ("clip", "CLIP", "pos", "clip"), ("clip", "CLIP", "neg", "clip"),
        ("apply", "MODEL", "sampler", "model"), ("pos", "CONDITIONING", "sampler", "positive"),
        ("neg", "CONDITIONING", "sampler", "negative"), ("latent", "LATENT", "sampler", "latent_image"),
        ("sampler", "LATENT", "decode", "samples"), ("ckpt", "VAE", "decode", "vae"),
        ("decode", "IMAGE", "save", "images"),
    ]
    return nodes, links


WORKFLOWS["sd35_instantx"] = sd35_graph(f"""## SD3.5 Large with the InstantX IP-Adapter

The reference image as an image prompt for SD3.5 Large: SigLIP so400m-384 encodes **Load Image** (`fit` squash, as
InstantX resizes), the adapter's time-conditioned resampler turns it into 64 tokens at each step, and every joint
block attends to them. Weight 0.5 to 0.7 is the usual range.

Model files:
{files_md("models/checkpoints/" + SD35, "models/text_encoders/" + FLUX_CLIP_L, "models/text_encoders/" + CLIP_G,
          "models/text_encoders/" + FLUX_T5, "models/clip_vision/" + SIGLIP, "models/ipadapter/" + INSTANTX_SD35)}
""", "ipadapter/sd35_instantx")

JS = """(spec) => {
  app.graph.clear();
  const made = {}, tops = {};
  const COL_X = [0, 460, 820, 1260, 1570], GAP = 40;
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error('unknown node type ' + n.type);
    app.graph.add(node);
    for (const [k, v] of Object.entries(n.widgets || {})) {
      const w = node.widgets.find(w => w.name === k);
      if (!w) throw new Error(n.type + ' has no widget ' + k);
      w.value = v;
    }
    if (n.title) node.title = n.title;
    if (n.size) node.size = n.size;
    const y = tops[n.col] || 0;
    node.pos = [COL_X[n.col], y];
    tops[n.col] = y + node.size[1] + GAP + 30;
    made[n.id] = node;
  }
  for (const [from, out, to, inp] of spec.links) {
    const a = made[from], b = made[to];
    const oi = typeof out === 'number' ? out : a.outputs.findIndex(o => o.type === out);
    const ii = b.inputs.findIndex(i => i.name === inp);
    if (oi < 0 || ii < 0) throw new Error('bad link ' + [from, out, to, inp].join(' '));
    if (!a.connect(oi, b, ii)) throw new Error('link refused ' + [from, out, to, inp].join(' '));
  }
  return JSON.stringify(app.graph.serialize());
}"""

def main(url, out, names=()):
    """Build every workflow of WORKFLOWS (or those in ``names``) in the front-end at ``url`` and write
    ``out/<name>.json``."""
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(tempfile.mkdtemp(), executable_path=shutil.which("chromium"), args=FLAGS,
                                                   headless=True, viewport={"width": 1600, "height": 1000})
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=60000)
        for name, (nodes, links) in WORKFLOWS.items():
            if names and name not in names:
                continue
            graph = json.loads(page.evaluate(JS, {"nodes": nodes, "links": links}))
            (out / f"{name}.json").write_text(json.dumps(graph, indent=2) + "\n")
            print("wrote", name, len(graph["nodes"]), "nodes", len(graph["links"]), "links")
        ctx.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
