"""Hugging Face interop: streaming safetensors weights into shardings with the HF Qwen2 name
mapping (`weights`, used by `models.factory`); the self-describing export (`export`, its
folder names in `layout`); what an imported checkpoint records about its model (`record`);
the hf-import / hf-export commands (`cli`); and the PyTorch VLM that loads an export
(`torch_vlm`, `torch_longnet`: the only modules here that import torch)."""
