"""Encode Face Prompt: reference images -> a FacePrompt (the ArcFace embedding of the chosen face(s) of each image,
and for FaceID Plus the CLIP hidden states of the aligned 224 px face crops). An image without a face is skipped
with a warning naming it; only when no image has one is it an error (docs/faceid.md#face-prompt)."""
import logging

import torch

import comfy.utils

from ..ipadapter_core import FacePrompt, InputError, check_images, choice, whole_number
from ..ipadapter_core.face_align import FACE_CHOICES, align, pick_faces
from ..ipadapter_core.face_prompt import normalised
from . import vision

CLIP_CROP = 224  # the reference's face_align.norm_crop(image, kps, 224) for Plus / Plus v2
MAX_FACES = 64
log = logging.getLogger(__name__)


def check_inputs(face_analysis, image, face: str, face_index: int, max_faces: int) -> None:
    if not hasattr(face_analysis, "faces"):
        raise InputError(f"face_analysis: expected a face analysis model, got {type(face_analysis).__name__}: "
                         "connect Load Face Analysis")
    check_images("image", image)
    choice("face", face, FACE_CHOICES)
    whole_number("face_index", face_index, 0, MAX_FACES - 1)
    whole_number("max_faces", max_faces, 1, MAX_FACES)


def _faces_of_images(face_analysis, image, face: str, face_index: int, max_faces: int, want_crops: bool):
    """(raw embeddings, 224 px crops or None, source image of each face, images skipped with the reason)."""
    raw, crops, sources, skipped = [], [], [], []
    progress = comfy.utils.ProgressBar(image.shape[0])
    for i in range(image.shape[0]):
        found = face_analysis.faces(image[i])
        boxes = torch.stack([f.box for f in found]) if found else torch.zeros(0, 4)
        picked = pick_faces(boxes, face, face_index, max_faces)
        if not picked:
            skipped.append((i, "no face found" if not found else f"{len(found)} face(s), none at face_index "
                                                                   f"{face_index}"))
        for j in picked:
            raw.append(found[j].embedding)
            sources.append(i)
            if want_crops:
                crops.append(align(image[i].double(), found[j].landmarks, CLIP_CROP).float())
        progress.update(1)
    return raw, crops, sources, skipped


def encode_face_prompt(face_analysis, image: torch.Tensor, clip_vision=None, face: str = "largest",
                       face_index: int = 0, max_faces: int = 1, batch_size: int = 8) -> FacePrompt:
    check_inputs(face_analysis, image, face, face_index, max_faces)
    raw, crops, sources, skipped = _faces_of_images(face_analysis, image, face, face_index, max_faces,
                                                    clip_vision is not None)
    count = image.shape[0]
    if not raw:
        reasons = "; ".join(f"image {i}: {why}" for i, why in skipped)
        raise InputError(f"image: no usable face in any of the {count} image(s) ({reasons}): use images with a "
                         "clear, frontal face, try another det_size in Load Face Analysis, or face 'largest'")
    for i, why in skipped:
        log.warning("Encode Face Prompt: image %d of %d skipped (%s); the other images are used", i, count, why)
    raw = torch.stack(raw)  # (n, 512)
    hidden = uncond = None
    if clip_vision is not None:
        crops = torch.stack(crops)  # (n, 224, 224, 3)
        hidden = vision.encode_hidden(clip_vision, crops, batch_size)
        uncond = vision.zero_image_hidden(clip_vision).to(hidden).expand(hidden.shape[0], -1, -1)
    return FacePrompt(normalised(raw), raw, hidden, uncond, tuple(sources))
