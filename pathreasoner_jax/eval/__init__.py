"""Evaluation and inference: `pathreasoner eval` (held-out generation for the untrained,
SFT and GRPO models, the shuffled-slide control: `runner`, `suites`), metrics (`metrics`,
`entities`), SlideBench / WSI-VQA (`slidebench`, `wsivqa`), `pathreasoner infer` with
occlusion evidence maps (`infer`, `evidence`), and the outputs (`report`, `plots`, `summary`)."""
