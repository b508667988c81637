"""The adapter's tensors under the host's model management.

What lives as long as a patched model is registered with it as additional models (``set_additional_models``,
key ``ipadapter``), each a ``comfy.model_patcher.ModelPatcher``:

- the adapter file's module (one patcher per loaded module: projection, image K/V layers, a FaceID file's
  resampler), whose layers are the host's manual-cast ops;
- per application, the tensors its patches hold (K'/V' of each layer, the per-frame image tokens, the tokens an
  SD3.5 adapter resamples each step) as the parameters of one small module.

The host counts them in the sampling's memory estimate (``get_nested_additional_models``, ``model_size``), loads
them to the compute device with the model and offloads them after. The patches hold the parameter objects
themselves, so a move of the module (the host swaps ``param.data`` in place) is what the patches see: no second
copy is kept. The patches' own ``to`` protocol still places what they need at the first call, and that is a no-op
for a tensor the host already moved.
"""
import torch

import comfy.model_management
import comfy.model_patcher

KEY = "ipadapter"
_PATCHER_ATTRIBUTE = "_ipadapter_patcher"


def module_patcher(module: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """The host's patcher for ``module`` (one per module, so each adapter file is counted once however many
    applications use it). Kept on the module itself: the two go together when nothing else holds them (a
    module-keyed cache would keep every module alive through its patcher)."""
    patcher = module.__dict__.get(_PATCHER_ATTRIBUTE)
    if patcher is None:
        patcher = comfy.model_patcher.ModelPatcher(module, load_device=comfy.model_management.get_torch_device(),
                                                   offload_device=comfy.model_management.unet_offload_device())
        module.__dict__[_PATCHER_ATTRIBUTE] = patcher
    return patcher


class HeldTensors(torch.nn.Module):
    """The tensors one application's patches hold, as parameters (no gradient) of one module."""

    def __init__(self):
        super().__init__()
        self.held = torch.nn.ParameterList()
        self._seen: dict[int, torch.nn.Parameter] = {}

    def hold(self, tensor):
        """``tensor`` as a parameter of this module (the same parameter for the same tensor); None stays None."""
        if tensor is None or not isinstance(tensor, torch.Tensor):
            return tensor
        if isinstance(tensor, torch.nn.Parameter):
            return tensor
        found = self._seen.get(id(tensor))
        if found is None:
            found = torch.nn.Parameter(tensor, requires_grad=False)
            self.held.append(found)
            self._seen[id(tensor)] = found
        return found


def hold_branches(branches: dict, held: HeldTensors) -> dict:
    """``branches`` ({layer or block key: Branch or StepBranch}) with every tensor they keep for sampling held by
    ``held``; shared per-frame data (one FrameData, one StepTokens per application) is held once."""
    from dataclasses import fields, is_dataclass, replace
    done = set()

    def frames(data):
        if data is not None and id(data) not in done:
            done.add(id(data))
            for name in ("tokens", "mask", "weights"):
                setattr(data, name, held.hold(getattr(data, name, None)))
        return data

    out = {}
    for key, branch in branches.items():
        if not is_dataclass(branch):
            out[key] = branch
            continue
        changes = {}
        for f in fields(branch):
            value = getattr(branch, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = held.hold(value)
            elif f.name == "frames":
                frames(value)
            elif f.name == "tokens" and value is not None and hasattr(value, "cond") and id(value) not in done:
                done.add(id(value))
                value.cond, value.uncond = held.hold(value.cond), held.hold(value.uncond)
        out[key] = replace(branch, **changes) if changes else branch
    return out


def register(patched, modules) -> None:
    """Add the patchers of ``modules`` (adapter modules, HeldTensors) to ``patched``'s additional models; a module
    already registered there (an adapter applied twice) is not added again."""
    present = patched.get_additional_models_with_key(KEY)
    known = {id(p.model) for p in present}
    added = [module_patcher(m) for m in modules if id(m) not in known and _has_tensors(m)]
    if added:
        patched.set_additional_models(KEY, [*present, *added])


def _has_tensors(module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def registered_bytes(patched) -> int:
    """What the host counts for the adapter's models on ``patched`` (their ``model_size``)."""
    return sum(p.model_size() for p in patched.get_additional_models_with_key(KEY))
