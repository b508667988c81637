"""Save Image Prompt and Load Image Prompt: an IMAGE_PROMPT as a safetensors file, to reuse an expensive encode."""
from ..host import files
from ..ipadapter_core import check_filename_prefix
from .sockets import CATEGORY, ImagePrompt, io, verdict


class SaveImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaveImagePrompt", display_name="Save Image Prompt", category=CATEGORY,
            description="Saves an image prompt or a face prompt (the encoded features, bit for bit) to "
                        "output/image_prompts/ so that Load Image Prompt can reuse it without the encoder.",
            inputs=[ImagePrompt.Input("image_prompt"), io.String.Input("filename_prefix", default="image_prompt")],
            outputs=[], is_output_node=True)

    @classmethod
    def validate_inputs(cls, filename_prefix=None):
        return verdict(*([] if filename_prefix is None else [lambda: check_filename_prefix(filename_prefix)]))

    @classmethod
    def execute(cls, image_prompt, filename_prefix):
        return io.NodeOutput(ui={"text": [files.save_prompt(image_prompt, filename_prefix)]})


class LoadImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadImagePrompt", display_name="Load Image Prompt", category=CATEGORY,
            description="Loads an image prompt saved by Save Image Prompt (from output/ or input/ image_prompts/).",
            inputs=[io.Combo.Input("prompt_file", options=files.saved_image_prompts(), tooltip=(
                "A file from output/image_prompts/ ('[output]') or input/image_prompts/."))],
            outputs=[ImagePrompt.Output(display_name="image_prompt")])

    @classmethod
    def validate_inputs(cls, prompt_file=None):
        return verdict(*([] if prompt_file is None else [lambda: files.check_prompt_name(prompt_file)]))

    @classmethod
    def fingerprint_inputs(cls, prompt_file):
        """Size and modification time of the file: a prompt saved again under the same name is read again."""
        return files.prompt_fingerprint(prompt_file)

    @classmethod
    def execute(cls, prompt_file):
        return io.NodeOutput(files.load_prompt(prompt_file))
