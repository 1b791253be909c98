"""Training inputs from prepared records: array_record + grain stores of samples and
slides (`store`), chat-template example encoding with trajectory and pseudo-bag masking
(`encode`), the resumable SFT loader (`loader`), fixed-shape GRPO/eval prompt batches
(`prompts`), and a TFDS builder over the same records (`tfds_builder`)."""
