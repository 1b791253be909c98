"""The same architecture in PyTorch, as the reference runs it, for `pathreasoner bench --baseline torch`.

- `longnet`: LongNet with dilated attention and the projector, written from SPEC §3
  (PyPI torchscale 0.3.0 has no LongNet), same conventions as our JAX version.
- `vlm`: HF transformers `Qwen2ForCausalLM` with the slide tokens spliced in at the
  `<image>` slots exactly as `PathVLM` does, and the SFT loss.
- `lora`: LoRA adapters on nn.Linear (what peft's LoRA layer computes).
- `transfer`: a PathVLM's weights copied into the torch model (for parity tests and
  for benchmarking both sides on identical weights).
- `sft`: one SFT step with torch AdamW, warm-up + cosine, grad-norm clipping.
- `rollout`: the reference's rollout: HF `generate` with each prompt repeated G times.
- `rewards`: the reference's reward loop: decode, regex, Aho-Corasick per completion.
"""
