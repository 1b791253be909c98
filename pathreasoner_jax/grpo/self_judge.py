"""The `self` semantic reward: the frozen reference model as judge (SPEC §6).

The reference policy reads the judge rubric (question, reference answer, candidate
answer; the same rubric as the endpoint judge) as a text-only chat turn and the score is
its next-token preference for "1" over "0": p("1") / (p("1") + p("0")), in [0, 1].
(Reading one token's probabilities keeps it to one batched forward pass, with no
sampling and no parsing failures.) Judging uses the starting checkpoint, never the
policy being trained, so the policy cannot talk its own judge into higher scores.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.data.encode import prompt_text
from pathreasoner_jax.grpo.judge import rubric_prompt
from pathreasoner_jax.text.decode import answer_texts
from pathreasoner_jax.models.qwen2 import positions_from_valid


@nnx.jit
def _last_logits(model, ids_bt, valid_bt):
    ctx = model.ctx()
    x = model.llm.embed(ids_bt, ctx)
    hidden, _ = model.llm(x, positions_from_valid(valid_bt), valid_bt, ctx)
    return model.llm.logits(hidden[:, -1])


class SelfJudge:
    def __init__(self, tokenizer, judge_model, max_len: int = 1024, pad_id: int = 0):
        self.tok, self.model, self.max_len, self.pad = tokenizer, judge_model, max_len, pad_id
        ids = [tokenizer.encode(d, add_special_tokens=False) for d in ("0", "1")]
        if any(len(i) != 1 for i in ids):
            raise ValueError("self judge: '0' and '1' must be single tokens of the tokenizer")
        self.zero, self.one = ids[0][0], ids[1][0]

    def score_texts(self, questions, references, candidates) -> np.ndarray:
        rows = [self.tok.encode(prompt_text(rubric_prompt(q, r, c)), add_special_tokens=False)[-self.max_len:]
                for q, r, c in zip(questions, references, candidates)]
        ids = np.full((len(rows), self.max_len), self.pad, np.int32)
        valid = np.zeros(ids.shape, bool)
        for i, r in enumerate(rows):  # left padding: the next token follows the last column
            ids[i, self.max_len - len(r):], valid[i, self.max_len - len(r):] = r, True
        logits = _last_logits(self.model, jnp.asarray(ids), jnp.asarray(valid))
        p = jax.nn.softmax(logits, -1)
        p1, p0 = p[:, self.one], p[:, self.zero]
        return np.asarray(p1 / jnp.maximum(p1 + p0, 1e-12), np.float32)

    def __call__(self, rollout, questions, references) -> jax.Array:
        answers = answer_texts(self.tok, np.asarray(rollout["tokens"]), np.asarray(rollout["mask"]))
        return jnp.asarray(self.score_texts(questions, references, answers))
