"""Writes the workflows in ``workflows/`` through ComfyUI's own front-end, so that they are saved exactly as the
front-end saves a graph: each is built node by node with LiteGraph in headless Chromium (widget values set by
name, links by socket), then serialised with ``app.graph.serialize()``.

    python tools/build_workflows.py http://127.0.0.1:8188/ workflows/

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

def main(url, out):
    """Build every workflow of WORKFLOWS in the front-end at ``url`` and write ``out/<name>.json``."""
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(tempfile.mkdtemp(), executable_path=shutil.which("chromium"), args=FLAGS,
                                                   headless=True, viewport={"width": 1600, "height": 1000})
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=60000)
        for name, (nodes, links) in WORKFLOWS.items():
            graph = json.loads(page.evaluate(JS, {"nodes": nodes, "links": links}))
            (out / f"{name}.json").write_text(json.dumps(graph, indent=2) + "\n")
            print("wrote", name, len(graph["nodes"]), "nodes", len(graph["links"]), "links")
        ctx.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
