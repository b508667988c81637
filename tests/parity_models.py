"""An independent reference for IP-Adapter parity tests: a tiny host UNet and the same UNet in diffusers.

Callers have already run ``conftest.import_host()`` (host first on sys.path, CPU forced).

``build_pair(layout)`` builds a tiny host model (``comfy.model_base.BaseModel``, EPS, the host's default discrete
model sampling) with the real SD1.5 / SDXL block and transformer layout, so that the host's attn2 patch keys
``(block_name, block_id, transformer_index)`` are those of the full-size model, and a ``diffusers``
``UNet2DConditionModel`` holding the same weights, converted with the host's own ``comfy.utils.unet_to_diffusers``.
``host_eps`` runs the host's real ``comfy.samplers.calc_cond_batch``; ``diffusers_eps`` computes the same epsilon
with diffusers; ``diffusers_load_ip_adapter`` / ``diffusers_set_scale`` add an IP-Adapter in the official format
with diffusers' own loader, so that diffusers is the reference for what an IP-Adapter should do.

``image_embeds`` for a diffusers UNet with one IP-Adapter loaded (diffusers 0.42.1)
-----------------------------------------------------------------------------------
Pass ``added_cond_kwargs={"image_embeds": [emb]}``: a list with one tensor per loaded IP-Adapter (here one).
``MultiIPAdapterImageProjection`` reads ``emb.shape[0]`` as the batch B and ``emb.shape[1]`` as the number of
reference images K, projects the ``B*K`` items one by one and hands ``[B, K, T, C]`` image tokens to every IP
attention processor (C = ``cross_attention_dim``). There, with no ``ip_adapter_masks``, ``to_k_ip`` / ``to_v_ip``
map them to ``[B, K, T, hidden]`` and ``.view(B, -1, heads, head_dim)`` lays the K images' tokens end to end: the K
images are CONCATENATED along the token axis (K*T keys), not averaged. The IP attention output is added as
``hidden_states + scale * ip_attention`` (a scale of exactly 0 skips it).

* base ("proj.weight" [4*C, E], "proj.bias", "norm.weight" [C], "norm.bias"; ``ImageProjection``:
  Linear(E, 4*C), reshape to [4, C], LayerNorm(C); 4 tokens per image, the count 4 is hard-coded by diffusers):
  ``emb`` is ``[B, K, E]`` -- the pooled, projected CLIP image embeds (``image_embeds``, E = 1024 for ViT-H).
  It MUST be 3-D: a 2-D ``[B, E]`` tensor inside the list is read as K = E and fails.
* plus (Perceiver resampler ``IPAdapterPlusImageProjection``; keys "latents" [1, Q, D], "proj_in" [D, W],
  "proj_out" [C, D], "norm_out", "layers.i.0.norm1/norm2/to_q/to_kv/to_out", "layers.i.1.0/1/3"):
  ``emb`` is ``[B, K, N, W]`` -- the CLIP vision penultimate hidden states (``hidden_states[-2]``, N = 257 tokens,
  W = 1280 for ViT-H); each image gives Q (= ``latents.shape[1]``, 16 officially) tokens. diffusers builds the
  resampler with depth 4 and dim_head 64 fixed and heads = ``to_q.weight.shape[0] // 64``, so a (tiny) plus
  state dict needs exactly 4 layers and a to_q width that is a multiple of 64.
* full-face ("proj.0" Linear(W, W), GELU, "proj.2" Linear(W, C), "proj.3" LayerNorm(C);
  ``IPAdapterFullImageProjection``): ``emb`` is ``[B, K, N, W]`` (penultimate hidden states, as for plus) and each
  image gives N (257) tokens: every token is projected on its own.

Rows: row b of ``emb`` goes with row b of the sample and of ``encoder_hidden_states``. diffusers pipelines run the
batch as [uncond rows, cond rows] and build ``emb = torch.cat([negative, positive])`` in that order, where the
negative ("uncond") image embeds are ``torch.zeros_like(image_embeds)`` for base and the hidden states of an
all-zero pixel image (``image_encoder(torch.zeros_like(image)).hidden_states[-2]``) for plus / full-face. Here each
``diffusers_eps`` call takes whatever batch you give it: pass the cond rows with the positive embeds and the
uncond rows with the negative ones, e.g. one call per row with B = 1.

Pitfalls found while building this
----------------------------------
* The host's ``calc_cond_batch`` batches ``conds=[cond, uncond]`` as ``cond_or_uncond == [1, 0]``: uncond rows
  first (it pops the batchable entries in reverse order), not ``[0, 1]``.
* ``BASE.__init__`` overwrites ``num_heads`` / ``num_head_channels`` with the class's ``unet_extra_config``; the
  tiny configs set them there. The host's default ops (``disable_weight_init``) leave weights uninitialised
  (``torch.empty``), so every parameter is filled from the seeded generator here.
* The host passes the timestep as float32 (``model_sampling.timestep(sigma).float()``); diffusers turns a Python
  float timestep into a float64 tensor, so ``diffusers_eps`` passes a float32 tensor of shape [B].
* After ``_load_ip_adapter_weights`` the diffusers UNet REQUIRES ``added_cond_kwargs["image_embeds"]``
  (``encoder_hid_dim_type`` becomes "ip_image_proj"): compute plain outputs before loading.
* ``unet_to_diffusers`` covers every key of these configs one to one (``build_pair`` checks both directions and
  the shapes). The map also holds ``class_embedding`` / ``add_embedding`` -> ``label_emb`` entries; these ADM-free
  configs have neither, so that part (SDXL's real ADM input) is not exercised here.
* Host attention on this CPU is ``attention_sub_quad`` (chunked softmax), diffusers uses SDPA: the fp32 difference is
  ~1e-6 relative. No upcasting question arises in fp32 (``attn_precision`` None, ``upcast_attention`` False).
* ``eps = (x - denoised) / sigma`` loses ~|x| / sigma * 1e-7: use sigmas of order 1 (the tests use 1.7) for tight
  comparisons; small sigmas amplify the rounding of ``calculate_denoised``.
* diffusers' loader calls ``self.to(dtype=...)`` and logs a harmless "should be kept in float32: []" warning.
"""
import math

import torch

import comfy.conds  # noqa: F401  (host cond classes; imported so callers can rely on them being loaded)
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers
import comfy.supported_models
import comfy.utils
from comfy.ldm.modules.attention import BasicTransformerBlock

LAYOUTS = ("sd15", "sdxl")
HEADS = 2
MODEL_CHANNELS = 32
IN_CHANNELS = 4


def _unet_config(layout, context_dim, model_channels=MODEL_CHANNELS, heads=HEADS):
    common = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                  adm_in_channels=None, dtype=torch.float32, in_channels=IN_CHANNELS,
                  model_channels=model_channels, context_dim=context_dim, num_heads=heads, num_head_channels=-1,
                  use_temporal_attention=False, use_temporal_resblock=False)
    if layout == "sd15":
        return dict(common, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                    use_linear_in_transformer=False)
    if layout == "sdxl":
        return dict(common, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                    transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                    use_linear_in_transformer=True)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def _diffusers_config(layout, context_dim):
    widths = [MODEL_CHANNELS * m for m in ([1, 2, 4, 4] if layout == "sd15" else [1, 2, 4])]
    common = dict(sample_size=8, in_channels=IN_CHANNELS, out_channels=4, block_out_channels=tuple(widths),
                  layers_per_block=2, cross_attention_dim=context_dim,
                  attention_head_dim=HEADS,  # diffusers' historical name: the number of heads
                  norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
                  center_input_sample=False, upcast_attention=False)
    if layout == "sd15":
        return dict(common,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                    transformer_layers_per_block=1, use_linear_projection=False)
    return dict(common,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), use_linear_projection=True)


def _randomize(module, seed):
    """Every parameter gets seeded random values: weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2),
    biases ~ N(0, 0.1^2); zero-initialised output layers (out.2, proj_out, out_layers.3 ...) included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            elif name.endswith("weight"):
                value = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                value = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(value.to(p.dtype))
        for name, b in module.named_buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                raise RuntimeError(f"uninitialised buffer {name}")


def _host_key_of_module(diffusion_model, x, t, context):
    """Run the host UNet once and record, for every cross-attention transformer block, the attn2 patch key the
    host computes for it: (block_name, block_id, transformer_index) = transformer_options['block'] + block_index."""
    seen = {}
    handles = []
    for name, mod in diffusion_model.named_modules():
        if isinstance(mod, BasicTransformerBlock) and mod.attn2 is not None:
            def hook(m, args, kwargs, name=name):
                opts = kwargs["transformer_options"]
                block = opts["block"]
                seen[name] = (block[0], int(block[1]), int(opts.get("block_index", 0)))
            handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            diffusion_model(x, t, context=context, transformer_options={})
    finally:
        for h in handles:
            h.remove()
    return seen


def build_pair(layout: str, seed: int = 0, context_dim: int = 32):
    """Return ``(patcher, unet, info)`` for layout "sd15" or "sdxl" (see the module docstring).

    ``info`` keys: layout, context_dim, in_channels, model_channels, heads, unet_config (host), diffusers_config,
    ``cross_attn``: list of ``((block_name, block_id, transformer_index), width)`` in diffusers' attn-processor
    order (IP-Adapter layer numbers 1, 3, 5, ... in that order), ``cross_attn_names``: the matching diffusers
    processor names, ``ip_numbers``: the matching IP-Adapter layer numbers.
    """
    import diffusers

    unet_config = _unet_config(layout, context_dim)
    model, patcher = _host_model(layout, unet_config, seed)
    dconf = _diffusers_config(layout, context_dim)
    unet = diffusers.UNet2DConditionModel(**dconf)
    d2h = comfy.utils.unet_to_diffusers(model.model_config.unet_config)
    unet.load_state_dict(_converted_weights(unet.state_dict(), model.diffusion_model.state_dict(), d2h), strict=True)
    unet = unet.float().eval()
    cross, names, numbers = _cross_attention_order(model, unet, d2h, seed, context_dim)
    info = dict(layout=layout, context_dim=context_dim, in_channels=IN_CHANNELS, model_channels=MODEL_CHANNELS,
                heads=HEADS, unet_config=unet_config, diffusers_config=dconf,
                cross_attn=cross, cross_attn_names=names, ip_numbers=numbers)
    return patcher, unet, info


def host_model(layout: str, context_dim: int, model_channels: int, heads: int = HEADS, seed: int = 0):
    """The host's ModelPatcher of a UNet with the real SD1.5 / SDXL block and transformer layout (so the real
    cross-attention layer count and keys) at any width, with seeded random weights; no diffusers twin (the
    benchmarks' models: SD1.5 at its full width 320, SDXL with reduced widths)."""
    return _host_model(layout, _unet_config(layout, context_dim, model_channels, heads), seed, heads)[1]


def _host_model(layout: str, unet_config: dict, seed: int, heads: int = HEADS):
    """The host's BaseModel (EPS) with the tiny config and seeded random weights, and its ModelPatcher."""
    base_cls = comfy.supported_models.SD15 if layout == "sd15" else comfy.supported_models.SDXL
    # BASE.__init__ copies unet_extra_config over the config: keep our head count.
    config_cls = type(f"Tiny{base_cls.__name__}", (base_cls,),
                      {"unet_extra_config": {"num_heads": heads, "num_head_channels": -1}})
    model_config = config_cls(unet_config)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.EPS, device=offload_device)
    _randomize(model.diffusion_model, seed)
    model.diffusion_model.float().eval()
    return model, comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def _converted_weights(wanted: dict, host_sd: dict, d2h: dict) -> dict:
    """The host UNet's weights under diffusers' names, every key and shape accounted for."""
    missing = [k for k in wanted if k not in d2h or d2h[k] not in host_sd]
    if missing:
        raise RuntimeError(f"unet_to_diffusers has no host key for {len(missing)} diffusers keys: {missing[:8]}")
    unused = sorted(set(host_sd) - {d2h[k] for k in wanted})
    if unused:
        raise RuntimeError(f"{len(unused)} host keys have no diffusers counterpart: {unused[:8]}")
    converted = {}
    for k, v in wanted.items():
        hv = host_sd[d2h[k]]
        if hv.shape != v.shape:
            raise RuntimeError(f"shape mismatch {k} {tuple(v.shape)} <- {d2h[k]} {tuple(hv.shape)}")
        converted[k] = hv.detach().float()  # load_state_dict copies
    return converted


def _cross_attention_order(model, unet, d2h: dict, seed: int, context_dim: int):
    """Cross-attention keys, in diffusers' processor order, derived from both models."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((1, IN_CHANNELS, 8, 8), generator=gen)
    ctx = torch.randn((1, 4, context_dim), generator=gen)
    key_of = _host_key_of_module(model.diffusion_model, x, torch.tensor([500.0]), ctx)
    cross, names, numbers = [], [], []
    for proc_name in unet.attn_processors.keys():
        if proc_name.endswith("attn1.processor"):
            continue  # diffusers numbers only the other (cross-attention) processors: 1, 3, 5, ...
        attn_path = proc_name[:-len(".processor")]
        host_param = d2h[attn_path + ".to_q.weight"]
        suffix = ".attn2.to_q.weight"
        if not host_param.endswith(suffix):
            raise RuntimeError(f"{proc_name} maps to {host_param}, not to a host attn2")
        host_block = host_param[:-len(suffix)]
        width = unet.get_submodule(attn_path).to_q.out_features
        host_width = model.diffusion_model.get_submodule(host_block).attn2.to_q.out_features
        if width != host_width:
            raise RuntimeError(f"width mismatch at {proc_name}: {width} vs {host_width}")
        cross.append((key_of[host_block], width))
        names.append(proc_name)
        numbers.append(2 * len(numbers) + 1)
    if len(key_of) != len(cross):
        raise RuntimeError(f"host has {len(key_of)} cross-attention blocks, diffusers {len(cross)}")
    return cross, names, numbers


def _sigma_tensor(sigma, batch):
    s = torch.as_tensor(sigma, dtype=torch.float32).flatten()
    if s.numel() == 1:
        s = s.expand(batch)
    return s.clone()


def host_eps(patcher, x, sigma, contexts, model_options=None):
    """Epsilon from the host's real ``comfy.samplers.calc_cond_batch``: one cond per context.

    ``contexts[0]`` is the positive cond, ``contexts[1]`` (if given) the negative one; each context is
    ``[1 or B, T, context_dim]``. The conds are built as the host's sampler builds them
    (``sampler_helpers.convert_cond`` then ``samplers.process_conds``, which runs the model's ``extra_conds`` and
    wraps the context in ``comfy.conds.CONDCrossAttn``), so the host batches them together, sets
    ``transformer_options['cond_or_uncond']`` ([1, 0] for two conds: uncond rows first) and ``['sigmas']``.
    Returns one tensor per context, shaped like ``x``: ``(x - denoised) / sigma``. Weight patches
    (``add_patches``) are not applied here; model_options patches (attn2 replace etc.) are.
    """
    model = patcher.model
    x = x.float()
    sigma_t = _sigma_tensor(sigma, x.shape[0]).to(x.device)
    names = ["positive", "negative"][:len(contexts)]
    if len(contexts) > 2:
        names += [f"extra{i}" for i in range(2, len(contexts))]
    conds = {name: comfy.sampler_helpers.convert_cond([[ctx, {}]]) for name, ctx in zip(names, contexts)}
    conds = comfy.samplers.process_conds(model, x, conds, patcher.load_device)
    if model_options is None:
        model_options = patcher.model_options
    patcher.pre_run()
    try:
        with torch.no_grad():
            denoised = comfy.samplers.calc_cond_batch(model, [conds[n] for n in names], x, sigma_t, model_options)
    finally:
        patcher.cleanup()
    s = sigma_t.view((-1,) + (1,) * (x.ndim - 1))
    return [(x - d) / s for d in denoised]


def diffusers_eps(unet, patcher, x, sigma, context, added_cond_kwargs=None):
    """Epsilon from diffusers for the same input: ``unet(c_in * x, t, context).sample`` with the host's c_in
    (``model_sampling.calculate_input``: x / sqrt(sigma^2 + 1) for EPS) and the host's timestep
    (``model_sampling.timestep(sigma)``, float32, shape [B]). ``context`` is ``[1 or B, T, context_dim]``."""
    ms = patcher.model.model_sampling
    x = x.float()
    sigma_t = _sigma_tensor(sigma, x.shape[0]).to(x.device)
    x_in = ms.calculate_input(sigma_t, x)
    t = ms.timestep(sigma_t).float()
    if context.shape[0] != x.shape[0]:
        context = context.expand(x.shape[0], -1, -1)
    with torch.no_grad():
        return unet(x_in, t, encoder_hidden_states=context.float(), added_cond_kwargs=added_cond_kwargs).sample


def diffusers_load_ip_adapter(unet, state_dict):
    """Load one IP-Adapter in the official format ``{"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight": ...}}``
    into ``unet`` with diffusers' own loader (the call ``IPAdapterMixin.load_ip_adapter`` makes). Afterwards every
    call needs ``added_cond_kwargs={"image_embeds": [emb]}`` shaped as the module docstring says."""
    unet._load_ip_adapter_weights([state_dict], low_cpu_mem_usage=False)
    unet.float().eval()
    return unet


def diffusers_set_scale(unet, scale):
    """Set the IP scale of every IP attention processor, through diffusers' ``IPAdapterMixin.set_ip_adapter_scale``
    (a float, or diffusers' per-block dict form)."""
    from types import SimpleNamespace

    from diffusers.loaders import IPAdapterMixin
    from diffusers.models.attention_processor import (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0,
                                                      IPAdapterXFormersAttnProcessor)

    procs = [p for p in unet.attn_processors.values()
             if isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor))]
    if not procs:
        raise RuntimeError("no IP-Adapter attention processors: load an IP-Adapter first")
    IPAdapterMixin.set_ip_adapter_scale(SimpleNamespace(unet=unet), scale)
    return unet
