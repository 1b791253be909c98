"""benchmarks/ablation_report.py's statistics and tables, against hand-computed expectations."""
import numpy as np

from benchmarks import ablation_report as A
from pathreasoner_jax.eval.metrics import entity_prf


def _scores(rng, n, acc, seeds=3):
    return [{"accuracy": (rng.random(n) < acc).astype(float).tolist(), "format": [1.0] * n,
             "ent_tp": rng.integers(0, 3, n).tolist(), "ent_pred": [3] * n, "ent_gold": [4] * n,
             "reward": rng.random(n).tolist(), "accuracy_shuffled": [0.0] * n} for _ in range(seeds)]


def test_entity_f1_statistic_is_the_micro_f1_of_the_sums():
    rng = np.random.default_rng(0)
    tp, n_pred, n_gold = rng.integers(0, 4, 20), rng.integers(4, 7, 20), rng.integers(4, 7, 20)
    pred = [set(range(p)) for p in n_pred]
    gold = [set(range(t)) | set(range(100, 100 + g - t)) for t, g in zip(tp, n_gold)]
    want = entity_prf(pred, gold)["entity_f1"]
    got = A._stat("entity_f1", {"ent_tp": tp, "ent_pred": n_pred, "ent_gold": n_gold})
    assert abs(got - want) < 1e-12


def test_bootstrap_interval_of_a_proportion_matches_the_normal_approximation():
    n = 400
    pol = {"p": [{"accuracy": (np.arange(n) % 2).astype(float)}]}  # p = 0.5 exactly, one seed
    est, lo, hi = A.bootstrap(pol, "accuracy", n_boot=4000)["policies"]["p"]
    half = 1.96 * np.sqrt(0.25 / n)  # 0.049
    assert est == 0.5 and abs((hi - lo) / 2 - half) < 0.008


def test_differences_are_paired_and_flag_only_what_is_outside_the_noise():
    rng = np.random.default_rng(2)
    n = 150
    base = _scores(rng, n, 0.4)
    same = [dict(s) for s in base]  # identical answers: the paired difference is exactly 0
    better = [dict(s, accuracy=[1.0] * n) for s in base]
    res = A.bootstrap({"base": base, "same": same, "better": better}, "accuracy",
                      [("same", "base"), ("better", "base")], n_boot=300)
    assert res["differences"]["same − base"] == (0.0, 0.0, 0.0)
    est, lo, hi = res["differences"]["better − base"]
    assert lo > 0 and abs(est - (1 - np.mean([s["accuracy"] for s in base]))) < 1e-12


def test_summary_tables_and_plot(tmp_path):
    rng = np.random.default_rng(3)
    seeds, n = [0, 1, 2], 40
    scores = {}
    for v in A.GRPO_VARIANTS:
        for s, sc in zip(seeds, _scores(rng, n, 0.5)):
            scores[f"GRPO {v} s{s}"] = sc
    for v in A.SFT_VARIANTS:
        for s, sc in zip(seeds, _scores(rng, n, 0.4)):
            scores[f"SFT {v} s{s}"] = sc
    summary = A.summarize(scores, seeds, "SFT loss-mode s0", {"sft", "grpo"})
    text = A.render_tables(summary)
    assert text.count("| (c) format+semantic+entity − SFT (GRPO start) |") == 1
    assert "| loss-mode + pseudo-bag − no masking |" in text
    acc = summary["grpo"]["accuracy"]["policies"]["(a) format"][0]
    assert abs(acc - np.mean([scores[f"GRPO (a) format s{s}"]["accuracy"] for s in seeds])) < 1e-12
    A.plot(summary, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    # README block from two results files: GRPO from the first, SFT from the second
    import json
    for name, parts in (("g.json", ["grpo"]), ("s.json", ["sft", "grpo"])):
        (tmp_path / name).write_text(json.dumps({"summary": {p: summary[p] for p in parts}, "config": "c.yaml",
                                                 "seeds": seeds, "n_questions": n, "wall_s": 60, "machine": "m"}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\n{A.README_START}\nold\n{A.README_END}\n\ntail\n")
    A.write_readme([str(tmp_path / "g.json"), str(tmp_path / "s.json")], str(readme))
    out = readme.read_text()
    assert "old" not in out and out.endswith("tail\n") and out.count(A.README_START) == 1
    assert "_GRPO side: g.json" in out and "_SFT side: s.json" in out and text in out
