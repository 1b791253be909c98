"""SFT logs TRL's `eval_loss` on the val split: the token mean of the plain SFT loss over
every val sample (checked one sample at a time, so batching cannot hide an error), plus
`learning_rate`, `num_tokens` and `epoch`."""
import json

import numpy as np
import jax

from sft_fixtures import make_dataset, make_tokenizer, write_prep_dir

CFG = __import__("os").path.join(__import__("os").path.dirname(__file__), "demo_like.yaml")


def test_sft_logs_validation_loss_equal_to_a_per_sample_mean(tmp_path):
    from pathreasoner_jax.checkpoint import restore_params
    from pathreasoner_jax.config import load_config
    from pathreasoner_jax.data.encode import ExampleEncoder, collate
    from pathreasoner_jax.data.store import SampleSource, SlideStore
    from pathreasoner_jax.runtime import setup
    from pathreasoner_jax.sft.loss import sft_loss
    from pathreasoner_jax.sft.trainer import train_sft

    make_tokenizer(str(tmp_path / "tok"))
    train, slides = make_dataset(8, seed=0)
    val, val_slides = make_dataset(4, seed=5, split="val")
    slides.update(val_slides)
    prep = str(tmp_path / "prep")
    write_prep_dir(prep, {"train": train, "val": val}, slides, str(tmp_path / "tok"))
    rt = setup(load_config(CFG, [f"run.root={tmp_path / 'run'}", f"data.prep_dir={prep}", "sft.max_steps=3",
                                 "sft.eval_every=2", "sft.trajectory_mask_rate=0.5"]))
    out = train_sft(rt)
    with open(rt.layout.metrics("sft")) as f:
        rows = [json.loads(ln) for ln in f]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "eval_loss" not in rows[0] and all(np.isfinite(r["eval_loss"]) for r in rows[1:])  # every 2 and the last
    assert all({"loss", "learning_rate", "grad_norm", "num_tokens", "epoch"} <= set(r) for r in rows)
    assert rows[0]["num_tokens"] < rows[1]["num_tokens"] < rows[2]["num_tokens"]
    assert rows[2]["epoch"] == 3 * rt.cfg.sft.batch_size / len(train)

    model = rt.build_model()
    restore_params(out, model)  # the step-3 weights
    enc = ExampleEncoder(rt.tokenizer, rt.ids.image, rt.cfg.data.sample_num, rt.cfg.sft.trajectory_mask_mode,
                         0.0, 0.0, None)  # no masking for validation
    store, total, count = SlideStore(prep), 0.0, 0.0
    for s in SampleSource(prep, "val"):
        ex = enc.encode(s, store[s.slide_id], np.random.default_rng(0))
        batch, _ = collate([ex], [store[s.slide_id]], rt.cfg.data.length_buckets, rt.cfg.data.sample_num,
                           rt.ids.pad)
        ls, n = sft_loss(model, jax.tree.map(jax.numpy.asarray, batch), model.ctx(rng=None))
        total, count = total + float(ls), count + float(n)
    np.testing.assert_allclose(rows[2]["eval_loss"], total / count, rtol=1e-5)
