"""The adapter's tensors under the host's model management (host/memory.py): what the patched model reports as its
additional models, what the host counts for them, and that the patches see the host's moves of them."""
import pytest
import torch

from conftest import HOST, NO_HOST_REASON
from tiny_adapters import CTX, apply_adapter, random_prompt, save_and_load, tiny_adapter

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)


@pytest.fixture(scope="module")
def sd15(host):
    from parity_models import build_pair
    return build_pair("sd15", seed=5, context_dim=CTX)


def _adapter(ext, info, tmp_path, kind="base", seed=4):
    sd = tiny_adapter(kind, [w for _, w in info["cross_attn"]], seed)
    return save_and_load(ext, tmp_path, sd, f"{kind}{seed}.safetensors"), sd


def _branches(patched):
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    return [b for patch in replaces.values() for b in patch.branches]


def _file_bytes(state_dict):
    return sum(t.numel() * t.element_size() for part in state_dict.values() for t in part.values())


def test_adapter_and_held_tensors_are_the_patched_models_additional_models(ext, sd15, tmp_path):
    """The patched model's additional models are the adapter's module and one module of the application's K'/V';
    the host counts for them (``model_size``) exactly the adapter file's bytes plus 4 K'/V' tensors of
    (1, 4, width) fp32 per layer, computed here from the layer widths; the unpatched model has none."""
    patcher, _, info = sd15
    adapter, state_dict = _adapter(ext, info, tmp_path)
    with torch.inference_mode():
        patched = apply_adapter(ext, patcher, adapter, random_prompt(ext, 1, seed=2), 0.8)
    models = patched.get_additional_models_with_key("ipadapter")
    assert len(models) == 2 and models[0].model is adapter.model
    assert not patcher.get_additional_models_with_key("ipadapter")
    assert {id(m) for m in models} <= {id(m) for m in patched.get_nested_additional_models()}  # what sampling loads
    kv_bytes = sum(4 * 4 * width * 4 for _, width in info["cross_attn"])
    assert models[0].model_size() == _file_bytes(state_dict)
    assert models[1].model_size() == kv_bytes
    assert ext.host.memory.registered_bytes(patched) == _file_bytes(state_dict) + kv_bytes


def test_the_patches_hold_the_registered_tensors_and_see_the_hosts_moves(ext, sd15, tmp_path):
    """Every K'/V' a patch holds is a parameter of the registered module (no second copy), and the projection
    weights of a tokens-held (unfolded) application are the adapter module's: when the host moves the modules
    (``model.to``: torch swaps each parameter's data in place, for a device as for a dtype; here to float64, the
    move a CPU run can make), the patches' tensors are moved with them."""
    patcher, _, info = sd15
    adapter, _ = _adapter(ext, info, tmp_path, "plus", seed=6)
    with torch.inference_mode():
        held = apply_adapter(ext, patcher, adapter, random_prompt(ext, 1, seed=3), 0.8)
        unfolded = apply_adapter(ext, patcher, adapter, random_prompt(ext, 3, seed=4), 0.8, unfold_batch=True)
    module = held.get_additional_models_with_key("ipadapter")[1].model
    params = {id(p) for p in module.parameters()}
    branches = _branches(held)
    assert branches and all(id(t) in params for b in branches for t in (b.k_cond, b.v_cond, b.k_uncond, b.v_uncond))
    tokens_module = unfolded.get_additional_models_with_key("ipadapter")[1].model
    tokens_branch = _branches(unfolded)[0]
    assert tokens_branch.frames.tokens is next(iter(tokens_module.parameters()))
    adapter_params = {id(p) for p in adapter.model.parameters()}
    assert all(id(w) in adapter_params for b in _branches(unfolded) for w in b.projection)

    module.to(torch.float64)
    assert all(t.dtype == torch.float64 for b in branches for t in (b.k_cond, b.v_cond, b.k_uncond, b.v_uncond))
    adapter.model.to(torch.float64)
    assert all(w.dtype == torch.float64 for b in _branches(unfolded) for w in b.projection)


def test_applying_twice_registers_the_adapter_once_and_each_application(ext, sd15, tmp_path):
    """Two applications of one adapter: the adapter's module is one additional model (counted once), each
    application's tensors another; a clone of the patched model keeps them."""
    patcher, _, info = sd15
    adapter, state_dict = _adapter(ext, info, tmp_path, seed=8)
    with torch.inference_mode():
        once = apply_adapter(ext, patcher, adapter, random_prompt(ext, 1, seed=5), 0.5)
        twice = apply_adapter(ext, once, adapter, random_prompt(ext, 1, seed=6), 0.5)
    models = twice.get_additional_models_with_key("ipadapter")
    assert [type(m.model).__name__ for m in models] == ["IPAdapterModel", "HeldTensors", "HeldTensors"]
    kv_bytes = sum(4 * 4 * width * 4 for _, width in info["cross_attn"])
    assert ext.host.memory.registered_bytes(twice) == _file_bytes(state_dict) + 2 * kv_bytes
    assert ext.host.memory.registered_bytes(twice.clone()) == ext.host.memory.registered_bytes(twice)


def test_a_patched_model_samples_the_same_through_the_hosts_low_vram_partial_load(ext, sd15, tmp_path):
    """The host's low-VRAM path (``ModelPatcher.load`` with a memory budget below the model's size: weights cast
    layer by layer at each call) runs the model patched with a plus adapter to the same eps as the full load, with
    the adapter's registered modules loaded through the same ``load``."""
    from parity_models import host_eps
    from tiny_adapters import SIGMA, tiny_inputs
    patcher, _, info = sd15
    adapter, _ = _adapter(ext, info, tmp_path, "plus", seed=9)
    x, cond, uncond = tiny_inputs(2)
    x = torch.cat([x, x.flip(-1)])  # two rows, non-square data
    with torch.inference_mode():
        patched = apply_adapter(ext, patcher, adapter, random_prompt(ext, 1, seed=7), 0.9)
        want = host_eps(patched, x, SIGMA, [cond, uncond])
        device = patched.load_device
        try:
            patched.load(device, lowvram_model_memory=1, force_patch_weights=False, full_load=False)
            for extra in patched.get_additional_models_with_key("ipadapter"):
                extra.load(device, lowvram_model_memory=1, force_patch_weights=False, full_load=False)
            assert patched.model.model_lowvram  # the host did take the partial-load path
            got = host_eps(patched, x, SIGMA, [cond, uncond])
        finally:
            patched.unpatch_model(patched.offload_device)
    plain = host_eps(patcher, x, SIGMA, [cond, uncond])
    for g, w, p in zip(got, want, plain):
        assert ((g - w).abs().max() / w.abs().max()).item() <= 1e-5
        assert ((w - p).abs().max() / p.abs().max()).item() > 1e-3  # the adapter acts


def test_an_adapter_no_longer_used_is_freed(ext, sd15, tmp_path):
    """Registration keeps no adapter alive: once the patched model and the adapter are dropped, the adapter's
    module and the application's tensors are collected (a module-keyed cache of patchers would keep them)."""
    import gc
    import weakref
    patcher, _, info = sd15
    adapter, _ = _adapter(ext, info, tmp_path, seed=10)
    with torch.inference_mode():
        patched = apply_adapter(ext, patcher, adapter, random_prompt(ext, 1, seed=8), 0.7)
    refs = [weakref.ref(m.model) for m in patched.get_additional_models_with_key("ipadapter")]
    assert all(r() is not None for r in refs)
    del adapter, patched
    gc.collect()
    assert all(r() is None for r in refs)
