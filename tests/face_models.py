"""Stand-in insightface model packs: small ONNX graphs with the real buffalo_l files' signatures (no weights can be
downloaded). Built with the ``onnx`` package's helper API.

- ``det_10g.onnx``: input ``input.1`` (1, 3, S, S); 9 outputs (scores (A, 1), box distances (A, 4), landmark
  offsets (A, 10) for strides 8, 16, 32; A = 2 anchors per cell), as SCRFD's. The outputs are constants placed at
  known anchors, times a gate that is 1 when the input's mean is above 0 (a bright image: "a face") and 0 when not
  (a dark image: no face), so every box and landmark is known in advance.
- ``w600k_r50.onnx``: input ``input.1`` (N, 3, 112, 112) -> ``683`` (N, 512): 16 x 16 average pooling, then a
  fixed linear map (147 -> 512); the test recomputes it from the crop's pixels.
"""
from dataclasses import dataclass

import numpy as np

STRIDES = (8, 16, 32)
ANCHORS = 2


@dataclass(frozen=True)
class KnownFace:
    stride: int
    cell: tuple[int, int]  # (x, y) of the feature-map cell
    anchor: int
    score: float
    dist: tuple[float, float, float, float]  # left, top, right, bottom, in strides
    kps: tuple[float, ...]  # 10 offsets (x, y) * 5, in strides

    def row(self, det_size):
        cells = det_size // self.stride
        return (self.cell[1] * cells + self.cell[0]) * ANCHORS + self.anchor

    def centre(self):
        return np.array(self.cell, dtype=np.float64) * self.stride

    def box(self):
        """x1, y1, x2, y2 in the detector's input pixels."""
        c, d = self.centre(), np.array(self.dist) * self.stride
        return np.array([c[0] - d[0], c[1] - d[1], c[0] + d[2], c[1] + d[3]])

    def landmarks(self):
        return self.centre()[None] + np.array(self.kps).reshape(5, 2) * self.stride


# A big face, a smaller one, and a weaker duplicate of the big one that NMS removes (for det_size 160).
EYES_NOSE_MOUTH = (-0.7, -0.6, 0.7, -0.6, 0.0, 0.1, -0.5, 0.8, 0.5, 0.8)
FACES = (
    KnownFace(16, (4, 4), 0, 0.9, (1.5, 2.0, 1.5, 2.5), EYES_NOSE_MOUTH),
    KnownFace(8, (14, 6), 1, 0.8, (1.0, 1.2, 1.0, 1.4), tuple(0.9 * v for v in EYES_NOSE_MOUTH)),
    KnownFace(8, (8, 8), 0, 0.6, (3.0, 4.0, 3.0, 5.0), EYES_NOSE_MOUTH),  # overlaps face 0: suppressed
)


def detector_outputs(det_size, faces=FACES):
    """The 9 constant outputs (scores, distances, landmark offsets per stride)."""
    scores, dists, kpss = [], [], []
    for stride in STRIDES:
        rows = (det_size // stride) ** 2 * ANCHORS
        score, dist, kps = np.zeros((rows, 1)), np.zeros((rows, 4)), np.zeros((rows, 10))
        for face in faces:
            if face.stride == stride:
                r = face.row(det_size)
                score[r, 0], dist[r], kps[r] = face.score, face.dist, face.kps
        scores.append(score), dists.append(dist), kpss.append(kps)
    return [a.astype(np.float32) for a in scores + dists + kpss]


def _save(graph, path):
    import onnx
    from onnx import helper
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _conv_stack(source, layers, seed):
    """Conv + ReLU layers on ``source`` with random weights (the benchmark's compute-matched stand-ins), reduced to
    one number times 0: nodes, initializers and the name of that zero."""
    from onnx import helper, numpy_helper
    g = np.random.default_rng(seed)
    nodes, inits, x = [], [], source
    for i, (out_ch, in_ch, stride) in enumerate(layers):
        w = (g.standard_normal((out_ch, in_ch, 3, 3)) / np.sqrt(9 * in_ch)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"conv{i}"))
        nodes += [helper.make_node("Conv", [x, f"conv{i}"], [f"c{i}"], strides=[stride, stride], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "nothing"))
    nodes += [helper.make_node("ReduceMean", [x], ["heavy"], keepdims=0),
              helper.make_node("Mul", ["heavy", "nothing"], ["heavy0"])]
    return nodes, inits, "heavy0"


# Conv stacks of about the real models' cost: SCRFD-10G ~10 GFLOPs at 640 px (this one 12.4), IResNet-50 ~6.3
# GFLOPs at 112 px (this one 6.1). Multiply-adds counted twice.
DETECTOR_COMPUTE = ((32, 3, 2), (64, 32, 2), (128, 64, 1), (128, 128, 1))
RECOGNIZER_COMPUTE = ((64, 3, 1), (128, 64, 2), (256, 128, 1), (256, 256, 1))


def write_detector(path, det_size, compute=False):
    from onnx import TensorProto, helper, numpy_helper
    names = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]  # det_10g's output names
    heavy, inits, zero = _conv_stack("input.1", DETECTOR_COMPUTE, 1) if compute else ([], [], None)
    mean = "mean0" if compute else "mean"
    nodes = heavy + [helper.make_node("ReduceMean", ["input.1"], [mean], keepdims=0)]
    if compute:
        nodes.append(helper.make_node("Add", [mean, zero], ["mean"]))
    nodes += [
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros((), np.float32))),
             helper.make_node("Greater", ["mean", "zero"], ["bright"]),
             helper.make_node("Cast", ["bright"], ["gate"], to=TensorProto.FLOAT)]
    outputs = []
    for name, value in zip(names, detector_outputs(det_size)):
        nodes.append(helper.make_node("Constant", [], [f"c{name}"], value=numpy_helper.from_array(value)))
        nodes.append(helper.make_node("Mul", [f"c{name}", "gate"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "scrfd_stand_in", [helper.make_tensor_value_info(
        "input.1", TensorProto.FLOAT, [1, 3, det_size, det_size])], outputs, initializer=inits)
    _save(graph, path)


def recognizer_weights(seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal((147, 512)) * 0.3).astype(np.float32), (g.standard_normal(512) * 0.1).astype(np.float32)


def write_recognizer(path, seed=0, compute=False):
    from onnx import TensorProto, helper, numpy_helper
    weight, bias = recognizer_weights(seed)
    heavy, inits, zero = _conv_stack("input.1", RECOGNIZER_COMPUTE, 2) if compute else ([], [], None)
    nodes = heavy + [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], ["683" if not compute else "light"])]
    if compute:
        nodes.append(helper.make_node("Add", ["light", zero], ["683"]))
    graph = helper.make_graph(
        nodes, "arcface_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b"), *inits])
    _save(graph, path)


def recognizer_reference(crop, seed=0):
    """The stand-in recognizer on a (112, 112, 3) crop in 0..1, in numpy: ArcFace's normalisation, 16 x 16 means
    per channel (channel-major, as Flatten orders them), the linear map."""
    weight, bias = recognizer_weights(seed)
    x = (np.asarray(crop, dtype=np.float64) * 255.0 - 127.5) / 127.5  # (112, 112, 3)
    pooled = x.reshape(7, 16, 7, 16, 3).mean(axis=(1, 3))  # (7, 7, 3)
    return pooled.transpose(2, 0, 1).reshape(-1) @ weight + bias  # (512,)


def write_pack(folder, det_size=160, compute=False):
    """models/insightface/models/<pack>/ with the two stand-in files; ``compute``: with conv stacks of about the
    real models' cost added (the benchmark)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_detector(folder / "det_10g.onnx", det_size, compute)
    write_recognizer(folder / "w600k_r50.onnx", compute=compute)
    return folder
