"""A tiny Flux in the host and its diffusers twin, and XLabs Flux IP-Adapters in their file layout.

Callers have already imported the host. ``host_flux`` builds the host's own ``comfy.model_base.Flux`` (the class
``comfy.ldm.flux.model.Flux``, model sampling FLUX) with the real block structure (19 double and 38 single
blocks) at tiny widths and seeded random weights; ``diffusers_flux`` holds the same weights in diffusers'
``FluxTransformer2DModel``, converted with the host's own ``comfy.utils.flux_to_diffusers`` map.

diffusers' Flux, as the reference (0.42.1)
------------------------------------------
* ``transformer(hidden_states (B, L, 64), encoder_hidden_states (B, T, C), pooled_projections (B, V), timestep
  (B,), img_ids (L, 3), txt_ids (T, 3), guidance (B,), joint_attention_kwargs)``: the latent packed in 2x2 patches
  as ``b c (h 2) (w 2) -> b (h w) (c 2 2)`` (the host's own order), ``img_ids`` = (0, row, col); the timestep and
  guidance are multiplied by 1000 inside, as the host's ``timestep_embedding`` does, and the host passes
  sigma itself as the timestep (FLUX model sampling), so the same numbers go in.
* The IP-Adapter: ``FluxIPAdapterAttnProcessor`` on the double blocks, loaded by ``_load_ip_adapter_weights`` from
  ``{"image_proj": {proj.*, norm.*}, "ip_adapter": {"{i}.to_k_ip.weight", ... ".bias"}}`` where i is the double
  block. The image tokens go in as ``joint_attention_kwargs={"ip_hidden_states": [tokens (B, N, C), ...]}`` (one
  entry per adapter) so that its image projection, which guesses 4 or 16 tokens from the full-size row count
  65536, is not used: the tokens come from diffusers' ``ImageProjection`` built with the file's token count.
* Each processor's ``scale`` list holds λ per adapter; the IP output is added after the block's feed-forward.
"""
import math

import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers
import comfy.supported_models
import comfy.utils

HIDDEN, HEADS, CONTEXT, VEC, TOKEN_WIDTH, EMBED = 32, 2, 32, 8, 32, 24
AXES = [4, 6, 6]  # sums to the head width 16
SIGMA = 0.6
GUIDANCE = 3.5


def _axes(head):
    """RoPE axes (index, row, column) summing to the head width: FLUX.1's 16, 56, 56 for 128."""
    return list(AXES) if head == 16 else [head // 8, head * 7 // 16, head * 7 // 16]


def flux_config(depth=19, single=38, hidden=HIDDEN, heads=HEADS):
    """The host's own reading of a FLUX.1-dev file (``comfy.model_detection`` on its key names, meta tensors), so a
    field a newer host adds comes with the host's value for FLUX.1 (0.33's ``txt_ids_dims``), then the tiny sizes.
    Detection takes the head width 128 (``hidden // sum(axes_dim)``): heads and RoPE axes are set here."""
    import comfy.model_detection

    def meta(*shape):
        return torch.empty(*shape, device="meta")
    state_dict = {"img_in.weight": meta(hidden, 64), "txt_in.weight": meta(hidden, CONTEXT),
                  "vector_in.in_layer.weight": meta(hidden, VEC), "guidance_in.in_layer.weight": meta(hidden, 256)}
    head = hidden // heads
    state_dict.update({f"double_blocks.{i}.img_attn.norm.key_norm.scale": meta(head) for i in range(depth)})
    state_dict.update({f"single_blocks.{i}.norm.key_norm.scale": meta(head) for i in range(single)})
    config = comfy.model_detection.detect_unet_config(state_dict, "")
    assert config is not None and config["image_model"] == "flux", config
    config.update(in_channels=16, out_channels=16, vec_in_dim=VEC, context_in_dim=CONTEXT, hidden_size=hidden,
                  num_heads=heads, depth=depth, depth_single_blocks=single, axes_dim=_axes(head), patch_size=2,
                  guidance_embed=True)
    return config


def randomize(module, seed):
    """Weights ~ N(0, 1/fan_in); norm weights and RMSNorm scales ~ 1 + N(0, 0.1^2); biases ~ N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                value = torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel())
            elif name.endswith(("weight", "scale")):
                value = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                value = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(value.to(p.dtype))


def host_flux(seed=0, **config):
    """The host's ModelPatcher of a tiny Flux (fp32, CPU)."""
    model_config = comfy.supported_models.Flux(flux_config(**config))
    model_config.set_inference_dtype(torch.float32, None)
    device = comfy.model_management.get_torch_device()
    model = comfy.model_base.Flux(model_config, device=comfy.model_management.unet_offload_device())
    randomize(model.diffusion_model, seed)
    model.diffusion_model.float().eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def diffusers_flux(patcher):
    """diffusers' FluxTransformer2DModel with the host model's weights (every key accounted for)."""
    import diffusers
    net = patcher.model.diffusion_model
    p = net.params
    twin = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=p.in_channels * 4, num_layers=p.depth, num_single_layers=p.depth_single_blocks,
        attention_head_dim=p.hidden_size // p.num_heads, num_attention_heads=p.num_heads,
        joint_attention_dim=p.context_in_dim, pooled_projection_dim=p.vec_in_dim, guidance_embeds=True,
        axes_dims_rope=tuple(p.axes_dim))
    key_map = comfy.utils.flux_to_diffusers({"depth": p.depth, "depth_single_blocks": p.depth_single_blocks,
                                             "hidden_size": p.hidden_size})
    return load_converted(twin, net.state_dict(), key_map)


def load_converted(twin, host_sd, key_map):
    """``twin`` (a diffusers model) loaded strictly with the host's weights through one of the host's own
    key maps (``comfy.utils.flux_to_diffusers`` / ``mmdit_to_diffusers``: a key, a (key, None, function) or a
    (key, (dim, start, length)) slice); every host key must be used."""
    converted = {}
    for key in twin.state_dict():
        target = key_map[key]
        if isinstance(target, str):
            converted[key] = host_sd[target]
        elif target[1] is None:
            converted[key] = target[2](host_sd[target[0]])
        else:
            dim, start, length = target[1]
            converted[key] = host_sd[target[0]].narrow(dim, start, length)
    used = {t if isinstance(t, str) else t[0] for k, t in key_map.items() if k in converted}
    assert used == set(host_sd), sorted(set(host_sd) - used)[:5]
    twin.load_state_dict(converted, strict=True)
    return twin.float().eval()


def xlabs_adapter(seed, tokens=4, blocks=19, hidden=HIDDEN, width=TOKEN_WIDTH, embed=EMBED):
    """An XLabs Flux IP-Adapter state dict in the file's flat layout (written out from the published format)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(shape, generator=g) * scale

    sd = {"ip_adapter_proj_model.proj.weight": rand(tokens * width, embed),
          "ip_adapter_proj_model.proj.bias": rand(tokens * width),
          "ip_adapter_proj_model.norm.weight": 1 + rand(width), "ip_adapter_proj_model.norm.bias": rand(width)}
    for i in range(blocks):
        for kv in "kv":
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj."
            sd[prefix + "weight"] = rand(hidden, width, scale=0.5)
            sd[prefix + "bias"] = rand(hidden, scale=0.5)
    return sd


def diffusers_load_xlabs(twin, adapters, scales):
    """Our conversion of XLabs files into diffusers' IP layout, loaded by diffusers' own loader."""
    converted = []
    for sd in adapters:
        width = sd["ip_adapter_proj_model.norm.weight"].shape[0]
        embed = sd["ip_adapter_proj_model.proj.weight"].shape[1]
        # a 4-token placeholder: the loader insists on an image projection it can size; the tokens are made by
        # diffusers_tokens and passed in (module docstring)
        proj = {"proj.weight": torch.zeros(4 * width, embed), "proj.bias": torch.zeros(4 * width),
                "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)}
        layers = {}
        for i in range(twin.config.num_layers):
            for kv in "kv":
                for end in ("weight", "bias"):
                    layers[f"{i}.to_{kv}_ip.{end}"] = sd[f"double_blocks.{i}.processor.ip_adapter_double_stream_"
                                                         f"{kv}_proj.{end}"]
        converted.append({"image_proj": proj, "ip_adapter": layers})
    twin._load_ip_adapter_weights(converted, low_cpu_mem_usage=False)
    for proc in twin.attn_processors.values():
        if hasattr(proc, "scale"):
            proc.scale = list(scales)
    return twin.float().eval()


def diffusers_tokens(sd, embeds, tokens):
    """diffusers' ImageProjection (Linear, reshape, LayerNorm) with the file's projection weights."""
    from diffusers.models.embeddings import ImageProjection
    width = sd["ip_adapter_proj_model.norm.weight"].shape[0]
    proj = ImageProjection(image_embed_dim=embeds.shape[-1], cross_attention_dim=width, num_image_text_embeds=tokens)
    proj.load_state_dict({k.replace("ip_adapter_proj_model.proj", "image_embeds").replace(
        "ip_adapter_proj_model.", ""): v for k, v in sd.items() if k.startswith("ip_adapter_proj_model.")})
    with torch.no_grad():
        return proj.float()(embeds.float())


def inputs(seed, size=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, size, size, generator=g), torch.randn(1, 5, CONTEXT, generator=g),
            torch.randn(1, 5, CONTEXT, generator=g), torch.randn(1, VEC, generator=g), torch.randn(1, VEC, generator=g))


def host_velocity(patcher, x, sigma, conds):
    """The model output (velocity) from the host's real ``calc_cond_batch``; ``conds``: [(context, pooled), ...],
    the first positive, the second (if any) negative. Contexts of one length are batched together as the host
    batches them (``cond_or_uncond`` [1, 0]: uncond rows first); the patcher's wrappers go into the options as
    the host's sampler puts them there (``sampler_helpers.prepare_model_patcher``)."""
    model = patcher.model
    sigma_t = torch.full((x.shape[0],), float(sigma))
    names = ["positive", "negative"][:len(conds)]
    built = {n: comfy.sampler_helpers.convert_cond([[ctx, {"pooled_output": y, "guidance": GUIDANCE}]])
             for n, (ctx, y) in zip(names, conds)}
    built = comfy.samplers.process_conds(model, x, built, patcher.load_device)
    options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
    comfy.sampler_helpers.prepare_model_patcher(patcher, built, options)  # the patcher's wrappers, as sampling
    patcher.pre_run()
    try:
        with torch.no_grad():
            denoised = comfy.samplers.calc_cond_batch(model, [built[n] for n in names], x, sigma_t, options)
    finally:
        patcher.cleanup()
    return [(x - d) / sigma for d in denoised]


def velocity_pair(patcher, seed=3):
    """The host's (cond, uncond) velocities on ``inputs(seed)`` at SIGMA."""
    x, ctx_c, ctx_u, y_c, y_u = inputs(seed)
    return host_velocity(patcher, x, SIGMA, [(ctx_c, y_c), (ctx_u, y_u)])


def diffusers_velocity(twin, x, sigma, context, pooled, ip_tokens=None):
    """The same output from diffusers: pack, run, unpack."""
    from einops import rearrange
    b, _, h, w = x.shape
    packed = rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    img_ids = torch.zeros(h // 2, w // 2, 3)
    img_ids[..., 1] = torch.arange(h // 2)[:, None]
    img_ids[..., 2] = torch.arange(w // 2)[None, :]
    kwargs = None if ip_tokens is None else {"ip_hidden_states": list(ip_tokens)}
    with torch.no_grad():
        out = twin(hidden_states=packed, encoder_hidden_states=context, pooled_projections=pooled,
                   timestep=torch.full((b,), float(sigma)), img_ids=img_ids.reshape(-1, 3),
                   txt_ids=torch.zeros(context.shape[1], 3), guidance=torch.full((b,), GUIDANCE),
                   joint_attention_kwargs=kwargs).sample
    return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, ph=2, pw=2)


# InstantX FLUX.1-dev IP-Adapter
# ------------------------------
# The reference below is written from the authors' published processor (InstantX/FLUX.1-dev-IP-Adapter's
# ``IPAFluxAttnProcessor2_0`` as its ComfyUI node Shakker-Labs/ComfyUI-IPAdapter-Flux runs it, with its blocks
# ``DoubleStreamBlockIPA`` / ``SingleStreamBlockIPA``), on diffusers' Flux attention (no diffusers class exists):
# * tokens = LayerNorm(Linear(GELU(Linear(pooled))) as T tokens of C) (its ``MLPProjModel``; diffusers'
#   ``IPAdapterFaceIDImageProjection`` computes the same);
# * per block, K' = tokens Wk'^T, V' = tokens Wv'^T (no bias), split into the block's heads, each RMS-normed over
#   the head's channels (diffusers' ``RMSNorm(d, eps=1e-5, elementwise_affine=False)``, as the authors use);
# * ip = scale * SDPA(q, K', V') with q the block's query after its q-norm and before RoPE: the image stream's in a
#   double block, the whole (text + image) sequence's in a single block;
# * ip is added to the attention output before the block's output projection (double: the image part, before
#   ``to_out``; single: every token, before ``proj_out``).

def instantx_adapter(seed, tokens=6, hidden=HIDDEN, width=TOKEN_WIDTH, embed=EMBED, inner=48, blocks=57):
    """An InstantX FLUX.1-dev state dict in the file's layout, flattened (``image_proj.*``, ``ip_adapter.*``)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(shape, generator=g) * scale

    sd = {"image_proj.proj.0.weight": rand(inner, embed, scale=0.3), "image_proj.proj.0.bias": rand(inner),
          "image_proj.proj.2.weight": rand(tokens * width, inner), "image_proj.proj.2.bias": rand(tokens * width),
          "image_proj.norm.weight": 1 + rand(width), "image_proj.norm.bias": rand(width)}
    for n in range(blocks):
        for kv in "kv":
            sd[f"ip_adapter.{n}.to_{kv}_ip.weight"] = rand(hidden, width, scale=0.5)
    return sd


def instantx_tokens(sd, embeds):
    """The image tokens (1, n*T, C) of pooled ``embeds`` (n, E) through diffusers' IPAdapterFaceIDImageProjection,
    the images' tokens side by side."""
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection
    inner, embed = sd["image_proj.proj.0.weight"].shape
    width = sd["image_proj.norm.weight"].shape[0]
    tokens = sd["image_proj.proj.2.weight"].shape[0] // width
    proj = IPAdapterFaceIDImageProjection(image_embed_dim=embed, cross_attention_dim=width, mult=inner // embed,
                                          num_tokens=tokens)
    names = {"ff.net.0.proj.weight": "proj.0.weight", "ff.net.0.proj.bias": "proj.0.bias",
             "ff.net.2.weight": "proj.2.weight", "ff.net.2.bias": "proj.2.bias", "norm.weight": "norm.weight",
             "norm.bias": "norm.bias"}
    proj.load_state_dict({ours: sd["image_proj." + theirs] for ours, theirs in names.items()})
    with torch.no_grad():
        return proj.float()(embeds.float()).reshape(1, -1, width)


class InstantXReferenceProcessor:
    """diffusers Flux attention plus the InstantX image term (notes above). ``adapters``: [(Wk', Wv', scale,
    tokens (1, N, C))], one entry per stacked adapter, for this block."""

    def __init__(self, adapters):
        from diffusers.models.normalization import RMSNorm
        self.adapters = adapters
        self._rms = RMSNorm

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        import torch.nn.functional as F
        from diffusers.models.embeddings import apply_rotary_emb
        d = attn.head_dim
        norm_kv = self._rms(d, eps=1e-5, elementwise_affine=False)
        split = lambda t: t.unflatten(-1, (-1, d))  # noqa: E731  (B, L, h, d)
        query = attn.norm_q(split(attn.to_q(hidden_states)))
        key, value = attn.norm_k(split(attn.to_k(hidden_states))), split(attn.to_v(hidden_states))
        ip_query = query  # after the q-norm, before RoPE: the image stream (double) or everything (single)
        if encoder_hidden_states is not None:
            query = torch.cat([attn.norm_added_q(split(attn.add_q_proj(encoder_hidden_states))), query], dim=1)
            key = torch.cat([attn.norm_added_k(split(attn.add_k_proj(encoder_hidden_states))), key], dim=1)
            value = torch.cat([split(attn.add_v_proj(encoder_hidden_states)), value], dim=1)
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2, 3)  # (B, T+L, h*d)
        ip_total = 0
        for wk, wv, scale, tokens in self.adapters:
            k_ip, v_ip = norm_kv(split(tokens @ wk.T)), norm_kv(split(tokens @ wv.T))  # (1, N, h, d)
            ip = F.scaled_dot_product_attention(ip_query.transpose(1, 2), k_ip.transpose(1, 2).expand(
                ip_query.shape[0], -1, -1, -1), v_ip.transpose(1, 2).expand(ip_query.shape[0], -1, -1, -1))
            ip_total = ip_total + scale * ip.transpose(1, 2).flatten(2, 3)  # (B, L, h*d)
        if encoder_hidden_states is None:
            return out + ip_total
        text = encoder_hidden_states.shape[1]
        hidden = attn.to_out[1](attn.to_out[0](out[:, text:] + ip_total))
        return hidden, attn.to_add_out(out[:, :text])


def diffusers_instantx(twin, adapters):
    """``twin`` with the reference processor on all 57 attentions; ``adapters``: [(state dict, scale, tokens)]."""
    double = twin.config.num_layers
    procs = {}
    for name in twin.attn_processors:
        index = int(name.split(".")[1])
        n = index if name.startswith("transformer_blocks.") else double + index
        procs[name] = InstantXReferenceProcessor([
            (sd[f"ip_adapter.{n}.to_k_ip.weight"].float(), sd[f"ip_adapter.{n}.to_v_ip.weight"].float(), scale,
             tokens) for sd, scale, tokens in adapters])
    twin.set_attn_processor(procs)
    return twin
