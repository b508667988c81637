"""What the host counts for the adapter (its additional models) against the bytes of the tensors it keeps.

    python benchmarks/bench_memory.py

For each official SD1.5 / SDXL adapter layout at real size (random fp16 file, as users' files are laid out), applies
it with one image to the host's SD1.5 / SDXL UNet built on the meta device (the UNet's weights are not needed), and
prints: the file's tensor bytes, the K'/V' bytes the application keeps (4 tensors of (1, tokens, width) per layer,
computed here from the layout), and what the host reports for the patched model's ``ipadapter`` additional models
(``ModelPatcher.model_size``, what its loader counts before sampling). Needs the ComfyUI host (COMFYUI_PATH or
$HOME/ComfyUI). Prints a table; asserts nothing.
"""
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path += [str(REPO), str(REPO / "tests")]

import launch  # noqa: E402

STEMS = ["ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter-full-face_sd15", "ip-adapter_sdxl",
         "ip-adapter-plus_sdxl_vit-h"]


def main():
    host = launch.find_comfyui()
    launch.import_host(str(host), cpu=True)
    ext = launch.import_extension()
    import importlib
    importlib.import_module(f"{ext.__name__}.nodes")
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    from official_formats import OFFICIAL, write_random_adapter
    from test_host_fit import UNET_CONFIGS

    models = {}
    for family, config_cls, model_cls in [("sd15", comfy.supported_models.SD15, comfy.model_base.BaseModel),
                                          ("sdxl", comfy.supported_models.SDXL, comfy.model_base.SDXL)]:
        model = model_cls(config_cls(dict(UNET_CONFIGS[family])), device="meta")
        models[family] = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                                          offload_device=torch.device("cpu"))
    print(f"host {host}")
    print(f"{'adapter':32} {'file MB':>9} {'K/V MB':>8} {'tensors MB':>11} {'host counts MB':>15} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for stem in STEMS:
            family = OFFICIAL[stem][5]
            path = Path(tmp) / f"{stem}.safetensors"
            write_random_adapter(str(path), stem)
            adapter = ext.host.files.load_adapter(str(path))
            file_bytes = sum(t.numel() * t.element_size() for t in adapter.model.state_dict().values())
            spec = adapter.spec
            g = torch.Generator().manual_seed(0)
            width = spec.encoder_width
            embeds = torch.randn(1, width, generator=g)
            hidden = torch.randn(1, 257, width, generator=g)
            prompt = ext.ipadapter_core.with_default_uncond(embeds, hidden, torch.zeros(1, 257, width))
            with torch.inference_mode():
                patched = ext.host.patching.apply_ip_adapter(models[family], adapter, prompt, 1.0, 0.0, 1.0)
            tokens = spec.tokens or 257  # full-face: one token per encoder token
            kv_bytes = sum(4 * tokens * inner * 4 for _, inner in spec.layers)  # K'/V' cond + uncond, fp32
            counted = ext.host.memory.registered_bytes(patched)
            mb = 1 / 2 ** 20
            print(f"{stem:32} {file_bytes * mb:9.1f} {kv_bytes * mb:8.2f} {(file_bytes + kv_bytes) * mb:11.2f} "
                  f"{counted * mb:15.2f} {counted / (file_bytes + kv_bytes):6.3f}")


if __name__ == "__main__":
    main()
