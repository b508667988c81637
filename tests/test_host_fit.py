"""Real-size layouts in the host: every official adapter format against the host's own SD1.5 and SDXL UNets,
built on the meta device (no memory, no values). The N -> block table is checked against the real modules."""
import pytest

from conftest import HOST, NO_HOST_REASON
from host_models import SD15_UNET_CONFIG
from official_formats import OFFICIAL, official_state_dict

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)

UNET_CONFIGS = {
    "sd15": SD15_UNET_CONFIG,
    # SDXL base, as the host's model detection derives it from a real checkpoint.
    "sdxl": dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 in_channels=4, model_channels=320, use_temporal_attention=False, use_temporal_resblock=False,
                 num_classes="sequential", adm_in_channels=2816, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_linear_in_transformer=True,
                 context_dim=2048, num_head_channels=64),
}


@pytest.fixture(scope="module")
def meta_models(host):
    import torch
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    built = {}
    for family, config_cls, model_cls in [("sd15", comfy.supported_models.SD15, comfy.model_base.BaseModel),
                                          ("sdxl", comfy.supported_models.SDXL, comfy.model_base.SDXL)]:
        model = model_cls(config_cls(dict(UNET_CONFIGS[family])), device="meta")
        built[family] = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                                         offload_device=torch.device("cpu"))
    return built


def _loaded(ext, stem):
    model = ext.ipadapter_core.IPAdapterModel.from_state_dict(official_state_dict(stem))
    return ext.host.files.LoadedAdapter(f"{stem}.safetensors", model)


def test_layer_table_matches_the_host_unets(ext, meta_models):
    for family, patcher in meta_models.items():
        layers = ext.host.unet.cross_attention_layers(patcher)
        sites = ext.ipadapter_core.LAYOUTS[family]
        assert {site.key for site in sites} == set(layers)
        assert all(layers[site.key].to_q.in_features == site.width for site in sites)


@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_official_adapter_fits_its_family_and_is_refused_by_the_other(ext, meta_models, stem):
    family = OFFICIAL[stem][5]
    other = "sdxl" if family == "sd15" else "sd15"
    adapter = _loaded(ext, stem)
    ext.host.unet.check_model_fits(meta_models[family], adapter)
    names = {"sd15": "SD1.5", "sdxl": "SDXL"}
    with pytest.raises(ext.ipadapter_core.ModelMismatchError) as err:
        ext.host.unet.check_model_fits(meta_models[other], adapter)
    message = str(err.value)
    assert f"made for {names[family]} models" in message and f"this model is {names[other]}" in message
    assert stem in message


def test_fresh_adapter_copies_the_checkpoints_own_attention_weights(ext, meta_models, tmp_path):
    """Training's W'k, W'v start as the checkpoint file's Wk, Wv at the file's precision (fp16 here), read from the
    file by the names the host gives the real-size SD1.5 UNet, not from a UNet already cast to bf16."""
    import torch
    import safetensors.torch
    from types import SimpleNamespace
    from ipadapter_suite.training.model import new_adapter, new_spec
    patcher = meta_models["sd15"]
    unet = patcher.get_model_object("diffusion_model")
    layers = ext.host.unet.cross_attention_layers(patcher)
    path_of = {id(m): name for name, m in unet.named_modules()}
    g = torch.Generator().manual_seed(0)
    stored = {f"model.diffusion_model.{path_of[id(attn)]}.to_{kv}.weight":
              (torch.randn(tuple(getattr(attn, f"to_{kv}").weight.shape), generator=g) * 0.05).half()
              for attn in layers.values() for kv in "kv"}
    stored["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)  # the rest of a checkpoint
    safetensors.torch.save_file(stored, str(tmp_path / "sd15.safetensors"))
    source = ext.host.unet.attention_weights_in_file(str(tmp_path / "sd15.safetensors"), patcher)
    assert set(source) == set(layers) and all(k.dtype == torch.float16 for k, _ in source.values())
    frozen = SimpleNamespace(patcher=patcher, family="sd15", embed_width=1024, hidden_width=1280,
                             source_weights=source)
    adapter = new_adapter(frozen, new_spec(frozen, "base"), seed=0)
    for site in ext.ipadapter_core.LAYOUTS["sd15"]:
        name = f"model.diffusion_model.{path_of[id(layers[site.key])]}"
        k_ip = adapter.ip_adapter[str(site.n)].to_k_ip.weight
        assert torch.equal(k_ip, stored[f"{name}.to_k.weight"].float())
        assert torch.equal(adapter.ip_adapter[str(site.n)].to_v_ip.weight, stored[f"{name}.to_v.weight"].float())
    bf16 = stored[f"{name}.to_k.weight"].bfloat16().float()
    assert not torch.equal(bf16, k_ip)  # what a copy from a bf16 UNet would have given
    assert ext.host.unet.attention_weights_in_file(str(tmp_path / "other.ckpt"), patcher) is None
