"""Masked SFT: the loss (`loss`), the pure jitted step with exact gradient accumulation
(`step`), the trainer around it (`trainer`), the pseudo-bag prior (`prior`) and the
`sft` / `prior` commands (`cli`)."""
