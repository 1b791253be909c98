"""The `self` semantic reward: p("1") / (p("1") + p("0")) of the frozen model's next token."""
import numpy as np

import jax
import jax.numpy as jnp

from pathreasoner_jax.data.encode import prompt_text
from pathreasoner_jax.grpo.judge import rubric_prompt
from pathreasoner_jax.grpo.self_judge import SelfJudge
from pathreasoner_jax.models.factory import create_model
from pathreasoner_jax.sharding import make_mesh
from sft_fixtures import make_tokenizer
from tiny_vlm import tiny_config


def test_self_judge_scores_match_an_independent_forward(tmp_path):
    tok, ids = make_tokenizer(str(tmp_path / "tok"))
    cfg = tiny_config(lora=False)
    cfg.llm.vocab_size = len(tok)
    model = create_model(cfg, ids.image, make_mesh(1, 1, 1, jax.devices()[:1]))
    judge = SelfJudge(tok, model, max_len=1024, pad_id=ids.pad)
    qs, refs, cands = ["What is it? <image>"] * 2, ["adenocarcinoma", "lymphoma"], ["adenocarcinoma", "no idea"]
    got = judge.score_texts(qs, refs, cands)
    one, zero = tok.encode("1", add_special_tokens=False)[0], tok.encode("0", add_special_tokens=False)[0]
    for i in range(2):
        row = tok.encode(prompt_text(rubric_prompt(qs[i], refs[i], cands[i])), add_special_tokens=False)
        x = jnp.asarray([row], jnp.int32)
        hidden, _ = model(x, jnp.ones_like(x, bool), None, None, model.ctx())  # unpadded, full VLM path
        p = np.asarray(jax.nn.softmax(model.llm.logits(hidden[:, -1]), -1))[0]
        assert abs(got[i] - p[one] / (p[one] + p[zero])) < 1e-5
    assert np.all((got >= 0) & (got <= 1))
