"""The face path without insightface (docs/faceid.md#face-path): an SCRFD detector's outputs -> boxes, scores and
5 landmarks; the similarity transform of the landmarks onto the ArcFace template (Umeyama's least squares); the
aligned crop the recognizer (112 px) and CLIP (224 px) read. Pure torch; the ONNX sessions run in host/."""
import math

import torch
import torch.nn.functional as F

# The five ArcFace landmarks (left eye, right eye, nose tip, left and right mouth corner) in the 112 x 112 crop.
ARCFACE_TEMPLATE = torch.tensor([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=torch.float64)
DETECTOR_MEAN, DETECTOR_STD = 127.5, 128.0  # SCRFD's input normalisation of 0..255 RGB pixels
RECOGNIZER_MEAN, RECOGNIZER_STD = 127.5, 127.5  # ArcFace's
SCORE_THRESHOLD, NMS_THRESHOLD = 0.5, 0.4


def template(size: int) -> torch.Tensor:
    """The template for a ``size`` crop: scaled by size/112 when 112 divides it, else by size/128 with an
    8 * size/128 shift right (insightface's convention)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112.0)
    ratio = size / 128.0
    return ARCFACE_TEMPLATE * ratio + torch.tensor([8.0 * ratio, 0.0], dtype=torch.float64)


def umeyama(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The similarity transform (scale, rotation, translation) mapping points ``src`` (K, 2) closest to ``dst``
    (K, 2) in least squares (Umeyama 1991), as a (2, 3) matrix ``[s R | t]``; float64."""
    src, dst = src.double(), dst.double()
    mean_src, mean_dst = src.mean(0), dst.mean(0)
    a, b = src - mean_src, dst - mean_dst  # (K, 2)
    cov = b.T @ a / src.shape[0]  # (2, 2)
    u, sigma, vt = torch.linalg.svd(cov)
    d = torch.ones(2, dtype=torch.float64)
    if torch.det(u) * torch.det(vt) < 0:
        d[1] = -1.0  # a reflection would fit better: the best proper rotation instead
    rotation = u @ torch.diag(d) @ vt
    scale = (sigma * d).sum() / a.pow(2).sum(1).mean()
    translation = mean_dst - scale * rotation @ mean_src
    return torch.cat([scale * rotation, translation[:, None]], dim=1)  # (2, 3)


def warp_affine(image: torch.Tensor, matrix: torch.Tensor, size: int) -> torch.Tensor:
    """Crop (size, size, 3) of ``image`` (H, W, 3): output pixel (x, y) is ``image`` bilinearly sampled at
    ``matrix^-1 @ (x, y, 1)`` (pixel centres at integer coordinates), zero outside the image."""
    h, w = image.shape[:2]
    full = torch.cat([matrix.double(), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    inverse = torch.linalg.inv(full)[:2]  # (2, 3): output -> input pixel coordinates
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1) @ inverse.T  # (size, size, 2) as (x, y)
    grid = torch.stack([points[..., 0] * 2 / max(w - 1, 1) - 1, points[..., 1] * 2 / max(h - 1, 1) - 1], dim=-1)
    pixels = image.permute(2, 0, 1)[None].double()  # (1, 3, H, W)
    out = F.grid_sample(pixels, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].permute(1, 2, 0).to(image.dtype)  # (size, size, 3)


def align(image: torch.Tensor, landmarks: torch.Tensor, size: int) -> torch.Tensor:
    """The aligned face crop (size, size, 3) for 5 landmarks (5, 2) in ``image``'s pixel coordinates."""
    return warp_affine(image, umeyama(landmarks, template(size)), size)


def letterbox(image: torch.Tensor, det_size: int) -> tuple[torch.Tensor, float]:
    """IMAGE (H, W, 3) in 0..1 -> the detector's input (1, 3, S, S) (resized to fit, top-left, zero padding,
    normalised) and the scale from image to input pixels."""
    h, w = image.shape[:2]
    scale = min(det_size / h, det_size / w)
    new_h, new_w = min(det_size, int(h * scale)), min(det_size, int(w * scale))
    pixels = image.permute(2, 0, 1)[None].float() * 255.0  # (1, 3, H, W)
    resized = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False)
    blob = torch.zeros(1, 3, det_size, det_size)
    blob[:, :, :new_h, :new_w] = (resized - DETECTOR_MEAN) / DETECTOR_STD
    return blob, new_h / h


def anchor_centres(det_size: int, stride: int, anchors: int) -> torch.Tensor:
    """(L * anchors, 2) anchor centres (x, y) of a stride's feature map, row-major, each repeated ``anchors``
    times (the order of SCRFD's outputs)."""
    cells = math.ceil(det_size / stride)
    ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    centres = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() * stride  # (L, 2)
    return centres.repeat_interleave(anchors, dim=0)


def decode_scrfd(outputs, det_size: int, strides=(8, 16, 32), threshold: float = SCORE_THRESHOLD):
    """SCRFD's 3 * len(strides) outputs (scores, box distances, landmark offsets per stride, each (A, k) or
    (1, A, k)) -> (boxes (K, 4) x1 y1 x2 y2, scores (K,), landmarks (K, 5, 2)) in input pixels, above
    ``threshold``, before NMS."""
    levels = len(strides)
    boxes, scores, landmarks = [], [], []
    for i, stride in enumerate(strides):
        score, dist, kps = (torch.as_tensor(outputs[i + j * levels]).float().reshape(-1, k)
                            for j, k in ((0, 1), (1, 4), (2, 10)))
        anchors = score.shape[0] // math.ceil(det_size / stride) ** 2
        centres = anchor_centres(det_size, stride, anchors)  # (A, 2)
        keep = score[:, 0] >= threshold
        c, d = centres[keep], dist[keep] * stride
        boxes.append(torch.cat([c - d[:, :2], c + d[:, 2:]], dim=1))  # distances left, top, right, bottom
        landmarks.append(c[:, None] + kps[keep].reshape(-1, 5, 2) * stride)  # (K, 5, 2)
        scores.append(score[keep, 0])
    return torch.cat(boxes), torch.cat(scores), torch.cat(landmarks)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float = NMS_THRESHOLD) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first (pixel-inclusive areas,
    as SCRFD computes them)."""
    order = scores.argsort(descending=True)
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt + 1).clamp(min=0).prod(dim=1)
        iou = inter / (area[i] + area[rest] - inter)
        order = rest[iou <= threshold]
    return torch.tensor(keep, dtype=torch.long)


def recognizer_input(crop: torch.Tensor) -> torch.Tensor:
    """An aligned 112 px crop (112, 112, 3) in 0..1 -> ArcFace's input (1, 3, 112, 112)."""
    return ((crop.permute(2, 0, 1)[None].float() * 255.0) - RECOGNIZER_MEAN) / RECOGNIZER_STD


FACE_CHOICES = ("largest", "index")


def pick_faces(boxes: torch.Tensor, how: str, index: int, count: int) -> list[int]:
    """Which detected faces (boxes in detection order, best score first) to use: the ``count`` largest (by box
    area), or ``count`` faces from position ``index`` in detection order; fewer when fewer were found."""
    if how == "largest":
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return area.argsort(descending=True, stable=True)[:count].tolist()
    return list(range(index, min(index + count, boxes.shape[0])))
