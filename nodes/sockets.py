"""What every node file shares: the pinned host API, our socket types and the validation answer.

The nodes import the host's V3 node API under the version name it was written against (``comfy_api.v0_0_2``).
That name is not a shield: on ComfyUI 0.33 ``v0_0_2`` re-exports ``latest``'s ``io``, so a host update reaches
these nodes either way. What guards them is the suite, run against the oldest supported host and today's
(README, "Tests"); where the two differ, the code asks the host for the capability it needs.
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
