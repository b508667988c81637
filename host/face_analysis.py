"""Face analysis models from ``models/insightface/models/<pack>/`` (buffalo_l, antelopev2: ONNX files), run by
onnxruntime alone or by insightface's FaceAnalysis when it is installed (docs/faceid.md#face-path). Both are
optional: without them the nodes say what to install."""
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

import folder_paths

from ..ipadapter_core import InputError
from ..ipadapter_core import face_align

FOLDER = "insightface"
BACKENDS = ("onnxruntime", "insightface")
INSTALL = {"onnxruntime": "pip install -r requirements-faceid.txt (onnxruntime)",
           "insightface": "pip install insightface (it may need a C++ compiler; the 'onnxruntime' backend "
                          "needs none)"}
log = logging.getLogger(__name__)


def register_model_folder() -> None:
    """``models/insightface`` (the packs live in its ``models/`` subfolder, as insightface lays them out)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)


def _roots() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER)) if FOLDER in folder_paths.folder_names_and_paths else []


def model_packs() -> list[str]:
    """The folders under ``<insightface path>/models/`` that hold .onnx files."""
    found = set()
    for root in _roots():
        models = os.path.join(root, "models")
        if os.path.isdir(models):
            found.update(name for name in os.listdir(models) if os.path.isdir(os.path.join(models, name))
                         and any(f.endswith(".onnx") for f in os.listdir(os.path.join(models, name))))
    return sorted(found)


def pack_path(name: str) -> str:
    for root in _roots():
        path = os.path.join(root, "models", name)
        if os.path.isdir(path):
            return path
    found = ", ".join(model_packs()) or "none"
    raise InputError(f"model_pack: '{name}' is not a folder of models/insightface/models/ (found: {found}): put "
                     "the pack's .onnx files (e.g. buffalo_l: det_10g.onnx, w600k_r50.onnx) in "
                     f"models/insightface/models/{name}/")


def require(backend: str):
    """The backend's module, or an InputError saying what to install."""
    if backend not in BACKENDS:
        raise InputError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    try:
        if backend == "onnxruntime":
            import onnxruntime
            return onnxruntime
        import insightface.app
        return insightface.app
    except ImportError as exc:
        raise InputError(f"the '{backend}' face backend is not installed ({exc}): {INSTALL[backend]}") from None


@dataclass(frozen=True)
class DetectedFace:
    box: torch.Tensor  # (4,) x1 y1 x2 y2 in image pixels
    score: float
    landmarks: torch.Tensor  # (5, 2)
    embedding: torch.Tensor  # (512,) as the recognizer gives it


@dataclass(frozen=True)
class FaceAnalysis:
    """The FACE_ANALYSIS socket value: ``faces(image (H, W, 3) in 0..1)`` -> the faces, best score first."""
    pack: str
    backend: str
    det_size: int
    runner: object = field(repr=False)

    def faces(self, image: torch.Tensor) -> list[DetectedFace]:
        return self.runner.faces(image, self.det_size)


class OnnxFaceRunner:
    """SCRFD detector + ArcFace recognizer sessions, found among a pack's .onnx files by their signatures."""

    def __init__(self, path: str):
        ort = require("onnxruntime")
        self.detector = self.recognizer = None
        for name in sorted(f for f in os.listdir(path) if f.endswith(".onnx")):
            session = ort.InferenceSession(os.path.join(path, name), providers=["CPUExecutionProvider"])
            inputs, outputs = session.get_inputs(), session.get_outputs()
            if len(outputs) == 9 and self.detector is None:
                self.detector = session  # SCRFD with landmarks: score, box, landmark outputs per stride 8/16/32
            elif list(inputs[0].shape[-2:]) == [112, 112] and outputs[0].shape[-1] == 512 and not self.recognizer:
                self.recognizer = session  # ArcFace
        if self.detector is None or self.recognizer is None:
            lacks = ("a face detector with landmarks (SCRFD, e.g. det_10g.onnx)" if self.detector is None
                     else "an ArcFace recognizer (112 x 112 -> 512, e.g. w600k_r50.onnx)")
            raise InputError(f"model_pack '{os.path.basename(path)}' lacks {lacks}: put the whole pack (buffalo_l "
                             "or antelopev2) in its folder")

    def faces(self, image: torch.Tensor, det_size: int) -> list[DetectedFace]:
        blob, scale = face_align.letterbox(image, det_size)
        outputs = self.detector.run(None, {self.detector.get_inputs()[0].name: blob.numpy()})
        boxes, scores, landmarks = face_align.decode_scrfd(outputs, det_size)
        keep = face_align.nms(boxes, scores)
        found = []
        for i in keep.tolist():
            points = landmarks[i] / scale
            crop = face_align.align(image.double(), points, 112)  # (112, 112, 3)
            feed = {self.recognizer.get_inputs()[0].name: face_align.recognizer_input(crop).numpy()}
            embedding = torch.from_numpy(self.recognizer.run(None, feed)[0][0].astype(np.float32))
            found.append(DetectedFace(boxes[i] / scale, float(scores[i]), points, embedding))
        return found


class InsightfaceRunner:
    """insightface's FaceAnalysis over the same pack folder (its detector and recognizer only)."""

    def __init__(self, path: str):
        app = require("insightface")
        self.app = app.FaceAnalysis(name=path, allowed_modules=["detection", "recognition"],
                                    providers=["CPUExecutionProvider"])
        self.size = None

    def faces(self, image: torch.Tensor, det_size: int) -> list[DetectedFace]:
        if self.size != det_size:
            self.app.prepare(ctx_id=-1, det_size=(det_size, det_size))
            self.size = det_size
        bgr = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()[..., ::-1].copy()  # insightface reads BGR
        return [DetectedFace(torch.from_numpy(face.bbox.astype(np.float32)), float(face.det_score),
                             torch.from_numpy(face.kps.astype(np.float32)),
                             torch.from_numpy(face.embedding.astype(np.float32))) for face in self.app.get(bgr)]


def load_face_analysis(pack: str, backend: str = "onnxruntime", det_size: int = 640) -> FaceAnalysis:
    if isinstance(det_size, bool) or not isinstance(det_size, int) or det_size < 64 or det_size % 32:
        raise InputError(f"det_size is {det_size!r}: give a multiple of 32 from 64 up (640 is insightface's "
                         "default)")
    require(backend)
    path = pack_path(pack)
    runner = OnnxFaceRunner(path) if backend == "onnxruntime" else InsightfaceRunner(path)
    return FaceAnalysis(pack, backend, det_size, runner)
