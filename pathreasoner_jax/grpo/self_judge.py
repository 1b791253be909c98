"""The `self` semantic reward: the frozen reference model as judge (SPEC §6).

The reference policy reads the judge rubric (question, reference answer, candidate
answer; the same rubric as the endpoint judge) as a text-only chat turn, and the score is
the expected value of the number it would write on the rubric's one-decimal grid
0.0, 0.1, …, 1.0. With q1 = p("1") / (p("1") + p("0")) for the first token, d = p("." | "0")
and the digit distribution p(k | "0.") for k = 0..9:

    score = q1 · 1 + (1 − q1) · d · Σ_k p(k | "0.")·k/10 / Σ_k p(k | "0.")

("0" not followed by "." is the score 0; "1" is 1 whatever follows). Reading only the
first token would score a judged 0.9 (first token "0") as about 0. One batched forward
over prompt + "0" + "." gives all three distributions, with no sampling and no parsing
failures; "0", "1", "." and the ten digits must be single tokens (as in Qwen's
tokenizer, which splits numbers into digits). Judging uses the starting checkpoint,
never the policy being trained, so the policy cannot talk its own judge into higher scores.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathreasoner_jax.data.encode import prompt_text
from pathreasoner_jax.grpo.judge import rubric_prompt
from pathreasoner_jax.models.qwen2 import positions_from_valid
from pathreasoner_jax.text.decode import answer_texts


@nnx.jit
def _tail_logits(model, ids_bt, valid_bt):
    """(B, 3, V) logits after the prompt, after "0" and after "0." (the last three positions)."""
    ctx = model.ctx()
    x = model.llm.embed(ids_bt, ctx)
    hidden, _ = model.llm(x, positions_from_valid(valid_bt), valid_bt, ctx)
    return model.llm.logits(hidden[:, -3:])


def expected_grid_score(probs_b3v, zero: int, one: int, dot: int, digits) -> np.ndarray:
    """The module docstring's formula on (B, 3, V) next-token probabilities."""
    p = np.asarray(probs_b3v, np.float64)
    p0, p1 = p[:, 0, zero], p[:, 0, one]
    q1 = p1 / np.maximum(p0 + p1, 1e-12)
    d = p[:, 1, dot]
    pd = p[:, 2, list(digits)]
    tenths = pd @ (np.arange(10) / 10.0) / np.maximum(pd.sum(1), 1e-12)
    return (q1 + (1.0 - q1) * d * tenths).astype(np.float32)


class SelfJudge:
    def __init__(self, tokenizer, judge_model, max_len: int = 1024, pad_id: int = 0):
        self.tok, self.model, self.max_len, self.pad = tokenizer, judge_model, max_len, pad_id
        ids = {c: tokenizer.encode(c, add_special_tokens=False) for c in "0123456789."}
        if any(len(i) != 1 for i in ids.values()):
            raise ValueError("self judge: the digits and '.' must be single tokens of the tokenizer")
        self.digits = [ids[str(k)][0] for k in range(10)]
        self.zero, self.one, self.dot = self.digits[0], self.digits[1], ids["."][0]

    def score_texts(self, questions, references, candidates) -> np.ndarray:
        rows = [self.tok.encode(prompt_text(rubric_prompt(q, r, c)), add_special_tokens=False)[-(self.max_len - 2):]
                + [self.zero, self.dot] for q, r, c in zip(questions, references, candidates)]
        ids = np.full((len(rows), self.max_len), self.pad, np.int32)
        valid = np.zeros(ids.shape, bool)
        for i, r in enumerate(rows):  # left padding: the next token follows the last column
            ids[i, self.max_len - len(r):], valid[i, self.max_len - len(r):] = r, True
        probs = jax.nn.softmax(_tail_logits(self.model, jnp.asarray(ids), jnp.asarray(valid)), -1)
        return expected_grid_score(probs, self.zero, self.one, self.dot, self.digits)

    def __call__(self, rollout, questions, references) -> jax.Array:
        answers = answer_texts(self.tok, np.asarray(rollout["tokens"]), np.asarray(rollout["mask"]))
        return jnp.asarray(self.score_texts(questions, references, answers))
