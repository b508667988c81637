"""IP-Adapter for ComfyUI: the entry point the host imports from custom_nodes/ (its V3 extension API).

Nothing is imported at package import: tests, benchmarks and the training commands import this package without
ComfyUI (launch.py); the nodes are imported when the host asks for them.
"""


async def comfy_entrypoint():
    from .nodes import extension
    return extension()
