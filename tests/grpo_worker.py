"""Runs one training stage of a test corpus in its own process (so a test can SIGKILL it),
GRPO with a programmatic reward that varies inside every group: the share of completion
tokens whose id is divisible by 3. So advantages, and the reward-weighted gradient, are
not zero, and a resumed run must reproduce them.

    python tests/grpo_worker.py {sft|grpo} CONFIG key=value ...
"""
import sys

import jax.numpy as jnp


def thirds_reward(rollout, batch, group_size):
    tok, m = rollout["tokens"], rollout["mask"].astype(bool)
    share = jnp.sum((tok % 3 == 0) & m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)
    share = share.astype(jnp.float32)
    return {"total": share, "thirds": share}


def main(stage: str, config: str, *overrides: str) -> None:
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.runtime import setup
    rt = setup(load_config(config, list(overrides)))
    if stage == "sft":
        from pathreasoner_jax.sft.trainer import train_sft
        train_sft(rt)
    else:
        import pathreasoner_jax.grpo.trainer as trainer
        trainer.make_reward_fn = lambda *a, **k: thirds_reward
        trainer.train_grpo(rt)


if __name__ == "__main__":
    main(*sys.argv[1:])
