"""Load Face Analysis and Encode Face Prompt: reference images -> a face prompt for the FaceID adapters."""
from ..host import face_analysis, face_prompt
from ..ipadapter_core import choice
from ..ipadapter_core.face_align import FACE_CHOICES
from .sockets import CATEGORY, FaceAnalysis, ImagePrompt, io, verdict


class LoadFaceAnalysis(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadFaceAnalysis", display_name="Load Face Analysis", category=CATEGORY,
            description="Loads an insightface model pack (buffalo_l, antelopev2: ONNX files in "
                        "models/insightface/models/<pack>/): a face detector with landmarks and the ArcFace "
                        "recognizer the FaceID adapters were trained on. Needs onnxruntime (requirements-faceid.txt)"
                        "; insightface itself is optional.",
            inputs=[
                io.Combo.Input("model_pack", options=face_analysis.model_packs(), tooltip=(
                    "A folder of models/insightface/models/ (buffalo_l for the FaceID files).")),
                io.Combo.Input("backend", options=list(face_analysis.BACKENDS), default="onnxruntime", tooltip=(
                    "onnxruntime: runs the pack's ONNX files directly (no compiler needed); insightface: its "
                    "FaceAnalysis, when installed.")),
                io.Int.Input("det_size", default=640, min=64, max=2048, step=32, tooltip=(
                    "The detector's input size (insightface's default 640); smaller finds large faces faster.")),
            ],
            outputs=[FaceAnalysis.Output(display_name="face_analysis")])

    @classmethod
    def validate_inputs(cls, model_pack=None, backend=None):
        checks = [] if backend is None else [lambda: face_analysis.require(backend)]
        if model_pack is not None:
            checks.append(lambda: face_analysis.pack_path(model_pack))
        return verdict(*checks)

    @classmethod
    def execute(cls, model_pack, backend, det_size):
        return io.NodeOutput(face_analysis.load_face_analysis(model_pack, backend, det_size))


class EncodeFacePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EncodeFacePrompt", display_name="Encode Face Prompt", category=CATEGORY,
            description="Finds the face in each reference image and encodes it for the FaceID adapters: its ArcFace "
                        "embedding, and with a CLIP vision model the aligned face crop's hidden states (FaceID "
                        "Plus / Plus v2). Images without a face are skipped with a warning.",
            inputs=[
                FaceAnalysis.Input("face_analysis"),
                io.Image.Input("image", tooltip="One or more reference images; every face found is used together."),
                io.ClipVision.Input("clip_vision", optional=True, tooltip=(
                    "Needed for FaceID Plus / Plus v2: OpenCLIP ViT-H/14.")),
                io.Combo.Input("face", options=list(FACE_CHOICES), default="largest", optional=True, tooltip=(
                    "Which face of an image: the largest, or by position (face_index) in detection order, best "
                    "score first.")),
                io.Int.Input("face_index", default=0, min=0, max=face_prompt.MAX_FACES - 1, optional=True),
                io.Int.Input("max_faces", default=1, min=1, max=face_prompt.MAX_FACES, optional=True, tooltip=(
                    "Faces taken from each image (Portrait adapters use several; their tokens are concatenated).")),
            ],
            outputs=[ImagePrompt.Output(display_name="image_prompt", tooltip=(
                "A face prompt for Apply IP-Adapter with a FaceID file."))])

    @classmethod
    def validate_inputs(cls, face=None):
        return verdict(*([] if face is None else [lambda: choice("face", face, FACE_CHOICES)]))

    @classmethod
    def execute(cls, face_analysis, image, clip_vision=None, face="largest", face_index=0, max_faces=1):
        return io.NodeOutput(face_prompt.encode_face_prompt(face_analysis, image, clip_vision, face, face_index,
                                                            max_faces))
