"""What both trainers (SFT and GRPO) share: which parameters train and their optimizer
(`params`), and the life of a stage in the run directory — skip when finished, clear on
--force, memory report, checkpoints with resume, the DONE marker (`stage`)."""
