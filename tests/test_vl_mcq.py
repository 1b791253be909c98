"""MCQ answers, rewards and metrics (vl/mcq.py) on hand-worked completions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pathreasoner_jax.vl.mcq import extract_letter, last_answer_span, mcq_metrics, mcq_prompt, mcq_rewards

OPTIONS = ["normal colonic mucosa", "colorectal adenocarcinoma", "squamous cell carcinoma",
           "reactive lymphoid hyperplasia"]


def tagged(answer: str) -> str:
    return f"<observe>keratin pearls</observe><think>squamous</think><answer>{answer}</answer>"


@pytest.mark.parametrize("answer, want", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("B)", "B"), (" B ", "B"),
    ("B. colorectal adenocarcinoma", "B"), ("b) colorectal adenocarcinoma", "B"), ("C: squamous", "C"),
    ("Option B", "B"), ("option (c)", "C"), ("answer: B", "B"), ("The answer is (D).", "D"),
    ("**Final answer:** Option B", "B"), ("I choose option C because of the pearls", "C"),
    ("squamous cell carcinoma (C)", "C"), ("A or A", "A"), ("a", "A"),
    # two different letters: no answer
    ("A or B", None), ("A, C", None), ("(A) or (B)", None), ("A/B", None), ("option A, not option B", None),
    ("B. adenocarcinoma, or option C", None),
    # outside the 4 options, empty, nothing letter-like
    ("E", None), ("(F) something", None), ("", None), ("   ", None), ("B-cell lymphoma", None),
    ("The answer is a carcinoma", None),
])
def test_extract_letter(answer, want):
    assert extract_letter(tagged(answer), 4) == want


def test_extract_letter_spans_and_option_text():
    assert extract_letter("B", 4) is None and extract_letter("The answer is B.", 4) is None  # no tags
    assert extract_letter("<observe>x</observe><answer>B", 4) is None  # cut off inside the span
    # the LAST span counts, end tokens ignored
    assert extract_letter("<answer>A</answer> wait <answer>C</answer><|im_end|>", 4) == "C"
    assert extract_letter("<answer>A</answer> wait <answer></answer>", 4) is None
    assert last_answer_span("<answer> x </answer><answer> y </answer>") == "y"
    # the option text, normalised (case, articles, a leading label), only with options
    assert extract_letter(tagged("Squamous cell carcinoma"), 4) is None
    assert extract_letter(tagged("Squamous cell carcinoma"), 4, OPTIONS) == "C"
    assert extract_letter(tagged("The diagnosis is a squamous cell carcinoma."), 4, OPTIONS) == "C"
    assert extract_letter(tagged("reactive lymphoid hyperplasia"), 3, OPTIONS) is None  # D is not offered
    assert extract_letter(tagged("carcinoma"), 4, OPTIONS) is None  # no option's text
    assert extract_letter(tagged("B"), 4, OPTIONS) == "B" and extract_letter(tagged("D"), 3, OPTIONS) is None
    assert extract_letter(tagged("B"), 2) == "B" and extract_letter(tagged("Z"), 26) == "Z"


def test_mcq_prompt():
    assert mcq_prompt(" What is the diagnosis? ", ["x", "y", "z"]) == "What is the diagnosis? Options: A. x B. y C. z"


def test_mcq_rewards():
    completions = [tagged("C"),                                            # right, formatted
                   "<answer>C</answer>",                                   # right, unformatted
                   tagged("A or C"),                                       # ambiguous
                   "squamous cell carcinoma",                              # no tags
                   tagged("squamous cell carcinoma"),                      # option text
                   tagged("B") + " trailing text"]                         # wrong, unformatted
    r = mcq_rewards(completions, ["C", "C", "C", "C", "C", "c"], 4, options=[OPTIONS] * 6)
    assert set(r) == {"accuracy", "format", "answered"}
    assert all(v.dtype == np.float32 and v.shape == (6,) for v in r.values())
    np.testing.assert_array_equal(r["accuracy"], [1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(r["format"], [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(r["answered"], [1, 1, 0, 0, 1, 1])
    # per-completion option counts; no options: the text answer is unanswered
    r = mcq_rewards([tagged("C"), tagged("C"), tagged("squamous cell carcinoma")], ["C", "C", "C"], [4, 2, 4])
    np.testing.assert_array_equal(r["accuracy"], [1, 0, 0])
    np.testing.assert_array_equal(r["answered"], [1, 0, 0])
    with pytest.raises(ValueError, match="2 values for 3"):
        mcq_rewards([tagged("C")] * 3, ["C", "C", "C"], [4, 4])
    assert mcq_rewards([], [], 4)["accuracy"].shape == (0,)


def test_mcq_metrics_hand_computed():
    preds = ["A", "B", None, "c", "D", "A", None]
    answers = ["A", "C", "B", "C", "D", "B", "A"]
    cats = ["colon", "colon", "colon", "skin", "skin", "", "lymph node"]
    m = mcq_metrics(preds, answers, cats, [4, 4, 4, 4, 4, 2, 5])
    assert m["n"] == 7
    assert m["accuracy"] == pytest.approx(3 / 7)                         # A, c, D
    assert m["answered"] == pytest.approx(5 / 7)
    assert m["chance"] == pytest.approx((5 * 0.25 + 0.5 + 0.2) / 7)
    assert m["per_category"] == {
        "colon": {"n": 3, "accuracy": pytest.approx(1 / 3), "answered": pytest.approx(2 / 3)},
        "skin": {"n": 2, "accuracy": 1.0, "answered": 1.0},
        "unknown": {"n": 1, "accuracy": 0.0, "answered": 1.0},
        "lymph node": {"n": 1, "accuracy": 0.0, "answered": 0.0}}
    assert json.loads(json.dumps(m)) == m  # plain JSON
    assert mcq_metrics([], [], [], 4) == {"n": 0, "accuracy": 0.0, "answered": 0.0, "chance": 0.0, "per_category": {}}
    with pytest.raises(ValueError, match="extract_letter"):
        mcq_metrics([tagged("A")], ["A"], ["x"], 4)
