"""Hugging Face interop: streaming safetensors weights in and out of shardings, with the HF
Qwen2 name mapping (`weights`, used by `models.factory`), and the hf-import / hf-export
commands (`cli`)."""
