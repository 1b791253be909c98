"""The names of an hf-export directory, shared by the writer (`export`, JAX side) and the
PyTorch loader (`torch_vlm`); no imports, so the loader needs neither JAX nor Flax.

    <out>/config.json, model*.safetensors, generation_config.json, tokenizer files
    <out>/slide_encoder/config.json      SLIDE_FORMAT, SLIDE_FORMAT_VERSION, SlideEncoderConfig
                                         fields, projector dims, image token (see export.py)
    <out>/slide_encoder/model.safetensors  slide_encoder.* and projector.* in PyTorch names
"""
SLIDE_DIR = "slide_encoder"
SLIDE_WEIGHTS = "model.safetensors"
SLIDE_FORMAT = "pathreasoner-slide-encoder"
SLIDE_FORMAT_VERSION = 1
SLIDE_MODULES = ("slide_encoder", "projector")  # the TorchVLM attributes the weights belong to
