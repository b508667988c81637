"""IP-Adapter for ComfyUI: entry point the host imports from custom_nodes/."""
import importlib.util

if importlib.util.find_spec("folder_paths") is None:
    # Imported outside ComfyUI (pytest imports this package while collecting tests/): no host to register with.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
