"""The `self` semantic reward: the expected rubric score (one-decimal grid) of the frozen model."""
import numpy as np

import jax
import jax.numpy as jnp

from pathreasoner_jax.data.encode import prompt_text
from pathreasoner_jax.grpo.judge import rubric_prompt
from pathreasoner_jax.grpo.self_judge import SelfJudge, expected_grid_score
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sharding import make_mesh
from sft_fixtures import make_tokenizer
from tiny_vlm import tiny_config


def test_grid_score_by_hand():
    """V = 13: ids 0..9 digits, 10 '.', 11/12 other tokens."""
    p = np.zeros((3, 3, 13))
    p[0, 0, [0, 1]] = [0.9, 0.1]            # first token "0" 90%
    p[0, 1, 10], p[0, 1, 12] = 0.8, 0.2     # "0" then "." 80%
    p[0, 2, 9], p[0, 2, 5] = 0.75, 0.25     # "0." then 9 or 5: 0.85 expected
    p[1, 0, [0, 1, 11]] = [0.0, 0.5, 0.5]   # only "1" among the digits: 1
    p[2, 0, 0], p[2, 1, 12] = 1.0, 1.0      # "0" and no ".": 0
    got = expected_grid_score(p, zero=0, one=1, dot=10, digits=range(10))
    assert np.allclose(got, [0.1 + 0.9 * 0.8 * (0.75 * 0.9 + 0.25 * 0.5), 1.0, 0.0], atol=1e-6)


def test_self_judge_scores_match_an_independent_forward(tmp_path):
    tok, ids = make_tokenizer(str(tmp_path / "tok"))
    cfg = tiny_config(lora=False)
    cfg.llm.vocab_size = len(tok)
    model = create_model(cfg, ids.image, make_mesh(1, 1, 1, jax.devices()[:1]))
    judge = SelfJudge(tok, model, max_len=1024, pad_id=ids.pad)
    qs, refs, cands = ["What is it? <image>"] * 2, ["adenocarcinoma", "lymphoma"], ["adenocarcinoma", "no idea"]
    got = judge.score_texts(qs, refs, cands)
    enc = lambda c: tok.encode(c, add_special_tokens=False)[0]  # noqa: E731
    digits = [enc(str(k)) for k in range(10)]
    for i in range(2):
        row = tok.encode(prompt_text(rubric_prompt(qs[i], refs[i], cands[i])), add_special_tokens=False)
        x = jnp.asarray([row + [digits[0], enc(".")]], jnp.int32)
        hidden, _ = model(x, jnp.ones_like(x, bool), None, None, model.ctx())  # unpadded, full VLM path
        p = np.asarray(jax.nn.softmax(model.llm.logits(hidden[0, -3:]), -1), np.float64)
        q1 = p[0, digits[1]] / (p[0, digits[1]] + p[0, digits[0]])
        tenths = sum(p[2, digits[k]] * k / 10 for k in range(10)) / sum(p[2, digits[k]] for k in range(10))
        assert abs(got[i] - (q1 + (1 - q1) * p[1, enc(".")] * tenths)) < 1e-5
    assert np.all((got >= 0) & (got <= 1))
