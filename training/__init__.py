"""IP-Adapter training on the host's (ComfyUI's) own models, through the same attention patch the nodes use.

``python -m training.train --help`` trains, ``python -m training.evaluate --help`` scores an adapter (CLIP-I,
CLIP-T). Everything written loads in LoadIPAdapter and in diffusers' ``load_ip_adapter``.
"""
