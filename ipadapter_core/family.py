"""The protocol of a DiT adapter family: what it recognises in a file, its spec, how it builds its module and
how it makes its branches from a prompt. One module per family fills one ``DiTFamily`` (``xlabs_flux.py``,
``instantx_flux.py``, ``instantx_sd35.py``); ``dit.py`` lists them and dispatches; the host keeps one entry per
family that finds its blocks and makes its patches (``host/dit.py``). The blocks a family patches are its spec's
``block_keys``."""
from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class DiTFamily:
    """One DiT IP-Adapter family.

    kind: its ``DiTAdapterSpec.kind``. title: its name in ``describe``. marks(flat): its key names are in the file
    (a DiT layout, not the h94 reader's; no tensor read). claims(flat): its detector reads the file (families are
    asked in the registry's order, the last one takes what the others leave). spec(flat): the spec, or
    AdapterFileError with the fix. module(spec, operations): the nn.Module whose state_dict keys equal the file's.
    branches(adapter, prompt, block_weights, sigma_range, *, schedule, mask, blocks, **host): {block key: branch}
    for its patches; ``blocks`` the host's blocks by key, ``host`` what the host entry adds."""
    kind: str
    title: str
    marks: Callable[[Mapping], bool]
    claims: Callable[[Mapping], bool]
    spec: Callable[[Mapping], object]
    module: type
    branches: Callable
