"""IP-Adapter Frame Weights (a weight per frame from a list or a curve) and IP-Adapter Crossfade Batches (two image
batches and their weights that fade from each reference image to the next), for Apply IP-Adapter (Advanced)'s
``frame_weights`` and ``unfold_batch``."""
from ..ipadapter_core import choice, whole_number
from ..ipadapter_core.schedules import CROSSFADE_METHODS, MAX_FRAMES, TIMINGS, check_curve, crossfade, frame_curve
from .sockets import CATEGORY, FrameWeights, io, verdict

WEIGHTS_OUT = "A weight per frame (frame 0 first): connect to frame_weights of Apply IP-Adapter (Advanced)."
INVERTED_OUT = "The complement (max + min - w) of every weight: the other image of a crossfade."
FRAMES_OUT = "The number of frames: the latent batch size the schedule is made for."


def _frame_input(name, default, low, tooltip):
    return io.Int.Input(name, default=default, min=low, max=MAX_FRAMES, tooltip=tooltip)


class IPAdapterFrameWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAdapterFrameWeights", display_name="IP-Adapter Frame Weights", category=CATEGORY,
            description="A weight multiplier per animation frame, from a list or a curve between two weights. "
                        "Frames are absolute: with AnimateDiff's context windows frame 40 reads entry 40.",
            inputs=[
                io.String.Input("weights", default="1.0, 0.0", multiline=True, tooltip=(
                    "custom: one weight per frame, e.g. '0, 0.5, 1, 1'. A curve: its first and last weights.")),
                io.Combo.Input("timing", options=list(TIMINGS), default="linear", tooltip=(
                    "custom: the list as it is. linear / ease in (slow start) / ease out (slow end) / ease "
                    "in-out: a curve from the first to the last weight.")),
                _frame_input("frames", 16, 1, "Frames of the curve (not used by custom)."),
                _frame_input("start_frame", 0, 0, "The curve starts here; earlier frames hold the first weight."),
                _frame_input("end_frame", MAX_FRAMES, 1, "The curve has reached the last weight at end_frame - 1 "
                             "(at most frames); later frames hold it."),
            ],
            outputs=[FrameWeights.Output(display_name="weights", tooltip=WEIGHTS_OUT),
                     FrameWeights.Output(display_name="weights_invert", tooltip=INVERTED_OUT),
                     io.Int.Output(display_name="frames", tooltip=FRAMES_OUT)])

    @classmethod
    def validate_inputs(cls, weights=None, timing=None, frames=None, start_frame=None, end_frame=None):
        values = (weights, timing, frames, start_frame, end_frame)
        if timing is not None and timing not in TIMINGS:  # the host does not check V3 options itself
            return verdict(lambda: choice("timing", timing, TIMINGS))
        if any(v is None for v in values):  # a linked widget: checked when the node runs
            return True
        return verdict(lambda: check_curve(*values))

    @classmethod
    def execute(cls, weights, timing, frames, start_frame, end_frame):
        schedule = frame_curve(weights, timing, frames, start_frame, end_frame)
        return io.NodeOutput(schedule, schedule.inverted(), len(schedule))


class IPAdapterCrossfadeBatches(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAdapterCrossfadeBatches", display_name="IP-Adapter Crossfade Batches", category=CATEGORY,
            description="Fades an animation from each reference image to the next: image_1 with weights and "
                        "image_2 with weights_invert, one image per frame. Encode each batch, apply each with "
                        "unfold_batch on and its weights as frame_weights, chained.",
            inputs=[
                io.Image.Input("image", tooltip="The reference images, in the order they appear."),
                FrameWeights.Input("frame_weights", tooltip=(
                    "One fade (e.g. IP-Adapter Frame Weights, '1.0, 0.0' linear over 16 frames): image_1's "
                    "weight while the next image fades in.")),
                io.Combo.Input("method", options=list(CROSSFADE_METHODS), default="shift batches", tooltip=(
                    "full batch: each image holds one fade's frames (image_2 = image_1). shift batches: fade i "
                    "goes from image i (image_1) to image i + 1 (image_2). alternate batches: the same fades, "
                    "even images in image_1 and odd ones in image_2.")),
                _frame_input("add_starting_frames", 0, 0, "Frames of the first image added before the fades."),
                _frame_input("add_ending_frames", 0, 0, "Frames of the last image added after the fades."),
            ],
            outputs=[FrameWeights.Output(display_name="weights", tooltip="image_1's weight per frame."),
                     FrameWeights.Output(display_name="weights_invert", tooltip="image_2's weight per frame."),
                     io.Image.Output(display_name="image_1", tooltip="One image per frame."),
                     io.Image.Output(display_name="image_2", tooltip="One image per frame."),
                     io.Int.Output(display_name="frames", tooltip=FRAMES_OUT)])

    @classmethod
    def validate_inputs(cls, method=None, add_starting_frames=None, add_ending_frames=None):
        checks = [] if method is None else [lambda: choice("method", method, CROSSFADE_METHODS)]
        for name, value in (("add_starting_frames", add_starting_frames), ("add_ending_frames", add_ending_frames)):
            if value is not None:
                checks.append(lambda n=name, v=value: whole_number(n, v, 0, MAX_FRAMES))
        return verdict(*checks)

    @classmethod
    def execute(cls, image, frame_weights, method, add_starting_frames, add_ending_frames):
        weights, inverted, image_1, image_2 = crossfade(image, frame_weights, method, add_starting_frames,
                                                        add_ending_frames)
        return io.NodeOutput(weights, inverted, image_1, image_2, len(weights))
