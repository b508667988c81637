"""The glue between the pure-torch core (``ipadapter_core``) and the ComfyUI host: the only code that imports
``comfy`` or ``folder_paths``. Both the nodes and the trainer call it; nothing here is imported at package import
time, so ``locate`` works before the host is on ``sys.path``.

- ``locate``: find and import the host from a process it did not start (training, tests, benchmarks).
- ``files``: the ``models/ipadapter`` folder, loading adapter files, saved image prompts.
- ``vision``: CLIP vision encoding into an ImagePrompt, the once-per-encoder unconditional image.
- ``unet``: the host UNet's cross-attention layers by patch key, its family, fit checks.
- ``patching``: Apply IP-Adapter on a model clone (policy resolved to data, patches through the host's API).
- ``regions``: IP-Adapter Regional Prompt (each region's image prompt under its mask, its text masked alike).
- ``dit``: the same for Flux and SD3.5 adapters, through ``patches_replace["dit"]`` (and, for SD3.5, the host's
  attention override), never the model's forward.
- ``loaders``: the host's checkpoint / CLIP vision loaders and sampler, for training and its validation.
- ``siglip_head``: SigLIP's attention-pooling head (the pooled embedding the host does not compute), found in the
  clip_vision folders by contents.
"""
