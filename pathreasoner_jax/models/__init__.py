"""Flax NNX models: the Qwen2 decoder with KV cache and shared-prefix attention (`qwen2`,
`attention`), LongNet dilated attention (`longnet`), LoRA-capable layers (`layers`), the
slide VLM splice (`vlm`) and building a model straight into its shardings (`factory`)."""
