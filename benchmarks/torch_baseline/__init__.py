"""The same architecture in PyTorch, as the reference runs it, for `pathreasoner bench --baseline torch`.

- the model itself is the library's PyTorch VLM (`pathreasoner_jax.hf.torch_vlm`: HF
  `Qwen2ForCausalLM` + LongNet (`hf.torch_longnet`, from SPEC §3; PyPI torchscale 0.3.0
  has no LongNet) + projector, spliced exactly as `PathVLM` does), which also loads
  hf-export directories;
- `vlm`: the SFT loss on it.
- `lora`: LoRA adapters on nn.Linear (what peft's LoRA layer computes).
- `transfer`: a PathVLM's weights copied into the torch model (for parity tests and
  for benchmarking both sides on identical weights).
- `sft`: one SFT step with torch AdamW, warm-up + cosine, grad-norm clipping.
- `rollout`: the reference's rollout: HF `generate` with each prompt repeated G times.
- `rewards`: the reference's reward loop: decode, regex, Aho-Corasick per completion.

Importing the package makes torchvision importable beside the CPU torch first
(`torchvision_cpu`): transformers imports it whenever it is installed.
"""
from benchmarks.torch_baseline.torchvision_cpu import ensure_torchvision_importable

ensure_torchvision_importable()
