"""What every node file shares: the pinned host API, our socket types and the validation answer.

The host's V3 node API is pinned to the version this extension is written against (``comfy_api.v0_0_2``), not
``latest``, so a host update that changes ``latest`` does not change these nodes.
"""
from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: F401  (re-exported for the node files)

from ..ipadapter_core import IPAdapterError
from ..ipadapter_core.checks import FRACTION_RANGE, WEIGHT_RANGE  # noqa: F401  (the widgets' ranges)

CATEGORY = "ipadapter"
IPAdapter = io.Custom("IPADAPTER")  # host.files.LoadedAdapter
ImagePrompt = io.Custom("IMAGE_PROMPT")  # ipadapter_core.ImagePrompt
FaceAnalysis = io.Custom("FACE_ANALYSIS")  # host.face_analysis.FaceAnalysis
FrameWeights = io.Custom("IPADAPTER_FRAME_WEIGHTS")  # ipadapter_core.schedules.FrameWeights: a weight per frame


def verdict(*checks) -> bool | str:
    """``validate_inputs``' answer: True, or the first failing check's message, which the host shows before
    anything runs. Checks of linked inputs (None at validation time) are the caller's to skip."""
    try:
        for check in checks:
            check()
    except IPAdapterError as exc:
        return str(exc)
    return True
