"""The face path on stand-in ONNX packs (tests/face_models.py): detection (known boxes and landmarks, NMS, the
letterbox scale), the similarity transform against a closed form, the aligned crop's pixels against bilinear
sampling written here, the embedding against the stand-in recognizer recomputed in numpy, the choice of faces,
images without a face, CLIP crops for Plus, the insightface backend where it is installed, and the message
when onnxruntime is missing."""
import logging
import sys

import numpy as np
import pytest
import torch

from conftest import HOST, NO_HOST_REASON

pytestmark = pytest.mark.skipif(HOST is None, reason=NO_HOST_REASON)
onnx = pytest.importorskip("onnx", reason="onnx (requirements-dev.txt) builds the stand-in face models")
pytest.importorskip("onnxruntime", reason="onnxruntime (requirements-faceid.txt) runs the face models")

import face_models  # noqa: E402

DET = 160
SIZE = 200  # the test image: scale 160 / 200 into the detector's input
SCALE = DET / SIZE
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]])


def _image(bright=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 6, SIZE), torch.linspace(0, 9, SIZE), indexing="ij")
    base = torch.stack([torch.sin(xs + ys), torch.cos(xs - 0.5 * ys), torch.sin(0.7 * xs * 0.5 + ys)], -1)
    image = (0.6 if bright else 0.1) + 0.25 * base + 0.02 * torch.rand(SIZE, SIZE, 3, generator=g)
    return image.clamp(0, 1)


@pytest.fixture(scope="module")
def pack(ext, tmp_path_factory):
    import folder_paths
    root = tmp_path_factory.mktemp("insightface")
    face_models.write_pack(root / "models" / "standin", DET)
    folder_paths.add_model_folder_path("insightface", str(root))
    return "standin"


def similarity_closed_form(src, dst):
    """2-D least-squares similarity as complex numbers: dst ~ a * src + b, a = sum (d - d0) conj(s - s0) /
    sum |s - s0|^2. Returns the (2, 3) matrix."""
    s, d = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    s0, d0 = s.mean(), d.mean()
    a = ((d - d0) * np.conj(s - s0)).sum() / (np.abs(s - s0) ** 2).sum()
    b = d0 - a * s0
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def bilinear_crop(image, matrix, size):
    """Output pixel (x, y) = image at inverse(matrix) (x, y), bilinear, zero outside."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape[:2]
    inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
    out = np.zeros((size, size, 3))
    for y in range(size):
        for x in range(size):
            sx, sy, _ = inv @ [x, y, 1]
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0
            for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy),
                                (1, 1, fx * fy)):
                yy, xx = y0 + dy, x0 + dx
                if 0 <= yy < h and 0 <= xx < w:
                    out[y, x] += wgt * img[yy, xx]
    return out


def test_umeyama_recovers_a_known_similarity_and_fits_like_the_closed_form(ext):
    from ipadapter_suite.ipadapter_core.face_align import template, umeyama
    g = np.random.default_rng(1)
    src = g.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    assert np.allclose(umeyama(torch.tensor(src), torch.tensor(dst)).numpy(), np.c_[scale * rot, shift], atol=1e-9)
    noisy = dst + g.normal(0, 2.0, dst.shape)
    assert np.allclose(umeyama(torch.tensor(src), torch.tensor(noisy)).numpy(), similarity_closed_form(src, noisy),
                       atol=1e-9)
    assert np.allclose(template(224).numpy(), 2 * TEMPLATE_112)


def test_onnx_backend_detects_aligns_and_embeds(ext, pack):
    fa = ext.host.face_analysis.load_face_analysis(pack, "onnxruntime", DET)
    image = _image()
    faces = fa.faces(image)
    known = face_models.FACES
    assert len(faces) == 2  # the third box overlaps the first with a lower score: NMS removes it
    for face, want in zip(faces, known[:2]):  # best score first
        assert face.score == pytest.approx(want.score)
        assert np.allclose(face.box.numpy(), want.box() / SCALE, atol=1e-4)
        assert np.allclose(face.landmarks.numpy(), want.landmarks() / SCALE, atol=1e-4)
        matrix = similarity_closed_form(want.landmarks() / SCALE, TEMPLATE_112)
        crop = bilinear_crop(image.numpy(), matrix, 112)
        ours = ext.ipadapter_core.face_align.align(image.double(), face.landmarks, 112).numpy()
        assert np.abs(ours - crop).max() < 1e-4
        expected = face_models.recognizer_reference(crop)
        assert np.abs(face.embedding.numpy() - expected).max() <= 1e-4 * np.abs(expected).max()


def test_face_choice_and_max_faces(ext, pack):
    fa = ext.host.face_analysis.load_face_analysis(pack, "onnxruntime", DET)
    encode = ext.host.face_prompt.encode_face_prompt
    image = _image()[None]
    faces = fa.faces(image[0])
    largest = encode(fa, image)
    assert largest.count == 1 and torch.equal(largest.raw[0], faces[0].embedding)
    second = encode(fa, image, face="index", face_index=1)
    assert torch.equal(second.raw[0], faces[1].embedding)
    both = encode(fa, image, max_faces=5)
    assert both.count == 2 and both.sources == (0, 0)
    assert torch.allclose(both.embeds.norm(dim=1), torch.ones(2))
    assert torch.allclose(both.embeds * both.raw.norm(dim=1, keepdim=True), both.raw, atol=1e-5)


def test_an_image_without_a_face_is_skipped_with_a_warning(ext, pack, caplog):
    fa = ext.host.face_analysis.load_face_analysis(pack, "onnxruntime", DET)
    batch = torch.stack([_image(seed=1), _image(bright=False), _image(seed=2)])
    with caplog.at_level(logging.WARNING):
        prompt = ext.host.face_prompt.encode_face_prompt(fa, batch)
    assert prompt.count == 2 and prompt.sources == (0, 2)
    assert torch.equal(prompt.raw[1], fa.faces(batch[2])[0].embedding)
    assert any("image 1 of 3 skipped (no face found)" in r.getMessage() for r in caplog.records)
    with pytest.raises(ext.ipadapter_core.InputError, match="no usable face in any of the 2 image.*image 0: no face"):
        ext.host.face_prompt.encode_face_prompt(fa, torch.stack([_image(False), _image(False)]))


def test_plus_crops_go_through_clip_vision(ext, pack, tmp_path):
    from host_models import tiny_clip_vision
    from tiny_adapters import EMBED, HIDDEN
    fa = ext.host.face_analysis.load_face_analysis(pack, "onnxruntime", DET)
    clip_vision = tiny_clip_vision(tmp_path, seed=3, hidden_size=HIDDEN, projection_dim=EMBED)
    image = _image()
    with torch.inference_mode():
        prompt = ext.host.face_prompt.encode_face_prompt(fa, image[None], clip_vision)
        landmarks = face_models.FACES[0].landmarks() / SCALE
        crop = bilinear_crop(image.numpy(), similarity_closed_form(landmarks, 2 * TEMPLATE_112), 224)
        want = clip_vision.encode_image(torch.tensor(crop, dtype=torch.float32)[None])["penultimate_hidden_states"]
    assert prompt.hidden.shape == want.shape
    assert (prompt.hidden - want).abs().max() <= 1e-3 * want.abs().max()
    assert prompt.uncond_hidden.shape == want.shape


def test_insightface_backend_agrees_where_installed(ext, pack):
    pytest.importorskip("insightface", reason="insightface is optional (the onnxruntime backend needs none)")
    ours = ext.host.face_analysis.load_face_analysis(pack, "onnxruntime", DET).faces(_image())
    theirs = ext.host.face_analysis.load_face_analysis(pack, "insightface", DET).faces(_image())
    assert len(theirs) == len(ours)
    for a, b in zip(ours, theirs):
        assert np.allclose(a.landmarks.numpy(), b.landmarks.numpy(), atol=0.05)
        cos = torch.nn.functional.cosine_similarity(a.embedding, b.embedding, dim=0)
        assert cos > 0.999  # insightface warps the uint8 image with OpenCV's fixed-point bilinear


def test_missing_backend_says_what_to_install(ext, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ext.ipadapter_core.InputError, match="pip install -r requirements-faceid.txt"):
        ext.host.face_analysis.require("onnxruntime")
