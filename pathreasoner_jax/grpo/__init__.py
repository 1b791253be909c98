"""Knowledge-aware GRPO / DAPO: device rewards (`rewards`) and the run's reward function
(`reward_fn`), the endpoint and self judges (`judge`, `self_judge`), advantages and losses,
the pure jitted step (`step`), one iteration with dynamic sampling (`iteration`) and the
trainer around them (`trainer`, `cli`)."""
