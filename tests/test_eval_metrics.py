"""Open-ended metrics against hand-computed values and the libraries' own numbers."""
import math

import pytest

from pathreasoner_jax.eval.entities import EntityLexicon
from pathreasoner_jax.eval.metrics import (
    bleu_scores, compute_metrics, entity_prf, extract_answer, format_compliance,
    is_format_compliant, normalize_answer, rouge_scores)


def traj(observe, think, answer):
    return f"<observe>{observe}</observe>\n<think>{think}</think>\n<answer>{answer}</answer>"


LEXICON = [
    {"name": "Adenocarcinoma", "type": "disease", "synonyms": ["adenoca"]},
    {"name": "Lung adenocarcinoma", "type": "disease", "synonyms": ["LUAD"]},
    {"name": "Gland formation", "type": "finding", "synonyms": ["glandular structures", "glands"]},
    {"name": "Necrosis", "type": "finding"},
    {"name": "Mucin", "type": "finding"},
]


# ---------------------------------------------------------------- format

@pytest.mark.parametrize("text,ok", [
    (traj("a", "b", "c"), True),
    ("<observe>a</observe><think>b</think><answer>c</answer>", True),
    ("  <observe>a</observe> <think>b</think>\n<answer>c</answer>\n<|im_end|>", True),
    ("<observe></observe><think></think><answer></answer>", True),
    ("<observe>a</observe><think>b</think><answer>c</answer><|im_end|><|endoftext|><|endoftext|>", True),
    ("<observe>a</observe><think>b</think><answer>c</answer><|im_start|>", False),  # not EOS/pad
    ("<think>b</think><observe>a</observe><answer>c</answer>", False),       # wrong order
    ("<observe>a</observe><think>b</think>", False),                         # no answer
    ("<info>a</info><think>b</think><answer>c</answer>", False),             # dataset tag, not canonical
    ("x <observe>a</observe><think>b</think><answer>c</answer>", False),     # text outside spans
    ("<observe>a</observe>x<think>b</think><answer>c</answer>", False),      # text between spans
    ("<observe>a</observe><think>b</think><answer>c</answer> more", False),
    ("<observe>a</observe><think>b<think>b</think><answer>c</answer>", False),  # a tag twice
    ("<observe>a</observe><think>b</think><answer>c</answer><answer>d</answer>", False),
])
def test_format_rule(text, ok):
    assert is_format_compliant(text) is ok


def test_format_compliance_fraction():
    good = traj("a", "b", "c")
    assert format_compliance([good, "plain", good, "<answer>x</answer>"]) == 0.5
    assert format_compliance([]) == 0.0


# ---------------------------------------------------------------- answer

def test_extract_answer():
    assert extract_answer(traj("o", "t", " Adenocarcinoma ")) == "Adenocarcinoma"
    assert extract_answer("<observe>o</observe><think>t</think><answer>Adenocar") == "Adenocar"  # cut off
    assert extract_answer("Adenocarcinoma") == "Adenocarcinoma"  # plain reference answer
    assert extract_answer("<answer>x</answer><|im_end|>") == "x"


@pytest.mark.parametrize("text,expected", [
    ("Final Diagnosis: Lung Adenocarcinoma.", "lung adenocarcinoma"),
    ("final diagnosis - an invasive ductal carcinoma", "invasive ductal carcinoma"),
    ("Answer: Diagnosis: The adenocarcinoma", "adenocarcinoma"),
    ("The most likely diagnosis is squamous cell carcinoma!", "squamous cell carcinoma"),
    ("  Non-small   cell, carcinoma ", "non small cell carcinoma"),
    ("HER2 3+", "her2 3+"),
    ("Diagnosis unclear", "diagnosis unclear"),   # no label delimiter: kept
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# ---------------------------------------------------------------- BLEU

def test_bleu_hand_computed():
    # hyp "a b c d" vs ref "a b x d": p1 = 3/4, p2 = 1/3, p3 = 0/2, p4 = 0/1, BP = 1.
    # sacrebleu's default 'exp' smoothing replaces the k-th zero precision by 1/(2^k · total):
    # p3 = 1/(2·2) = 1/4, p4 = 1/(4·1) = 1/4.
    s = bleu_scores(["a b c d"], ["a b x d"])
    assert s["bleu1"] == pytest.approx(0.75)
    assert s["bleu2"] == pytest.approx(math.sqrt(0.75 / 3))  # = 0.5
    assert s["bleu3"] == pytest.approx((0.75 / 3 * 0.25) ** (1 / 3))
    assert s["bleu4"] == pytest.approx((0.75 / 3 * 0.25 * 0.25) ** (1 / 4))
    # short hypothesis: all n-grams match, brevity penalty exp(1 - 3/2)
    s = bleu_scores(["the cat"], ["The cat sat"])  # lowercased
    assert s["bleu1"] == pytest.approx(math.exp(-0.5))
    assert s["bleu2"] == pytest.approx(math.exp(-0.5))
    assert bleu_scores(["same words here now"], ["same words here now"])["bleu4"] == pytest.approx(1.0)


def test_bleu_matches_library_references():
    import sacrebleu
    from nltk.translate.bleu_score import corpus_bleu

    hyps = ["the tumour shows gland formation with mucin", "necrosis is present in the centre",
            "no malignancy identified"]
    refs = ["the tumour shows irregular gland formation and mucin", "central necrosis is present",
            "no evidence of malignancy identified here"]
    ours = bleu_scores(hyps, refs)
    # sacrebleu's own corpus BLEU-4 (its defaults + lowercase)
    assert ours["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score / 100)
    # nltk, an independent implementation, on the same whitespace tokens (no punctuation here,
    # so 13a tokenisation is whitespace splitting); BLEU-1/2 have no zero n-gram counts, so
    # no smoothing enters and the two libraries must agree.
    for n in (1, 2):
        ref = corpus_bleu([[r.split()] for r in refs], [h.split() for h in hyps], weights=[1 / n] * n)
        assert ours[f"bleu{n}"] == pytest.approx(ref, rel=1e-9)


# ---------------------------------------------------------------- ROUGE

def test_rouge_hand_computed():
    # pred "the cat sat" vs ref "the cat sat on the mat":
    # R1: P = 3/3, R = 3/6 → F = 2/3; R2: P = 2/2, R = 2/5 → F = 4/7; RL: LCS = 3 → 2/3.
    s = rouge_scores(["the cat sat"], ["the cat sat on the mat"])
    assert s["rouge1"] == pytest.approx(2 / 3)
    assert s["rouge2"] == pytest.approx(4 / 7)
    assert s["rougeL"] == pytest.approx(2 / 3)
    # LCS differs from unigram overlap: pred "b a" vs ref "a b": R1 = 1, RL = 1/2, R2 = 0.
    s = rouge_scores(["b a"], ["a b"])
    assert (s["rouge1"], s["rouge2"], s["rougeL"]) == pytest.approx((1.0, 0.0, 0.5))
    # mean over samples: (1 + 0) / 2
    assert rouge_scores(["x y", "p q"], ["x y", "r s"])["rouge1"] == pytest.approx(0.5)


def test_rouge_matches_library():
    from rouge_score import rouge_scorer

    hyps = ["Glands are invading the stroma", "tumour cells with necrosis"]
    refs = ["malignant glands invade the stroma", "necrotic tumour cells"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ref_scores = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    ours = rouge_scores(hyps, refs)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert ours[k] == pytest.approx(sum(s[k].fmeasure for s in ref_scores) / 2)


# ---------------------------------------------------------------- entities

def test_entity_linking_whole_word_longest_synonyms():
    lex = EntityLexicon(LEXICON)
    text = "LUAD with glandular structures; no necrosis. Adenocarcinomatous? adenoca. Mucinous."
    assert lex.entities(text) == {"Lung adenocarcinoma", "Gland formation", "Necrosis", "Adenocarcinoma"}
    text = "Lung Adenocarcinoma, glands"
    found = [(m.name, text[m.start:m.end]) for m in lex.find(text)]
    assert found == [("Lung adenocarcinoma", "Lung Adenocarcinoma"), ("Gland formation", "glands")]


def test_entity_prf_micro_average():
    # sample 1: P={a,b,c}, G={a,b} → tp 2; sample 2: P={d}, G={e,f} → tp 0; sample 3: P={}, G={g}
    # micro: precision 2/4, recall 2/5, F1 = 2·.5·.4/.9 = 4/9
    s = entity_prf([{"a", "b", "c"}, {"d"}, set()], [{"a", "b"}, {"e", "f"}, {"g"}])
    assert s["entity_precision"] == pytest.approx(0.5)
    assert s["entity_recall"] == pytest.approx(0.4)
    assert s["entity_f1"] == pytest.approx(4 / 9)
    assert entity_prf([set()], [set()]) == {"entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}


# ---------------------------------------------------------------- compute_metrics

def test_compute_metrics_keys_and_hand_values():
    preds = [
        traj("Glands with mucin.", "Glands mean adenocarcinoma.", "Final Diagnosis: Adenocarcinoma"),
        traj("Necrosis.", "Necrosis present.", "squamous cell carcinoma"),
        "Adenocarcinoma",  # no format
    ]
    refs = [
        traj("Gland formation and necrosis.", "Points to lung adenocarcinoma.", "adenocarcinoma."),
        traj("Necrosis.", "x", "Squamous cell carcinoma"),
        traj("Mucin.", "y", "Mucinous adenocarcinoma"),
    ]
    m = compute_metrics(preds, refs, ["lung", "lung", "colon"], LEXICON)
    expected_keys = {"format_compliance", "answer_accuracy", "bleu1", "bleu2", "bleu3", "bleu4",
                     "rouge1", "rouge2", "rougeL", "entity_precision", "entity_recall", "entity_f1",
                     "n", "per_category"}
    assert set(m) == expected_keys
    assert m["n"] == 3
    assert m["format_compliance"] == pytest.approx(2 / 3)
    assert m["answer_accuracy"] == pytest.approx(2 / 3)  # 1 and 2 match after normalisation
    # entities (observe+think spans): pred1 {Gland formation, Mucin, Adenocarcinoma},
    # pred2 {Necrosis}, pred3 {Adenocarcinoma} (no spans: whole text) → 5 predicted;
    # gold1 {Gland formation, Necrosis, Lung adenocarcinoma}, gold2 {Necrosis}, gold3 {Mucin}
    # → 5 gold; TP = 1 (Gland formation) + 1 (Necrosis) = 2 → P = R = F1 = 2/5.
    assert m["entity_precision"] == pytest.approx(0.4)
    assert m["entity_recall"] == pytest.approx(0.4)
    assert m["entity_f1"] == pytest.approx(0.4)
    assert set(m["per_category"]) == {"lung", "colon"}
    lung, colon = m["per_category"]["lung"], m["per_category"]["colon"]
    assert set(lung) == expected_keys - {"per_category"}
    assert (lung["n"], lung["answer_accuracy"], lung["format_compliance"]) == (2, 1.0, 1.0)
    assert (colon["n"], colon["answer_accuracy"], colon["format_compliance"]) == (1, 0.0, 0.0)
    # colon: pred answer "Adenocarcinoma" vs "Mucinous adenocarcinoma": R1 P = 1, R = 1/2 → 2/3
    assert colon["rouge1"] == pytest.approx(2 / 3)
    assert colon["entity_precision"] == 0.0 and colon["entity_recall"] == 0.0
    # lung answers equal after tokenisation except the label: "Final Diagnosis: Adenocarcinoma"
    # vs "adenocarcinoma." and "squamous cell carcinoma" vs itself → per-sample R1 F:
    # sample 1: P = 1/3 ("final", "diagnosis", "adenocarcinoma"), R = 1/1 → 1/2; sample 2: 1.
    assert lung["rouge1"] == pytest.approx((0.5 + 1.0) / 2)


def test_compute_metrics_reference_entities_and_no_categories():
    preds = [traj("Necrosis and mucin", "t", "x")]
    m = compute_metrics(preds, ["X."], None, LEXICON, reference_entities=[{"Necrosis"}])
    assert m["per_category"] == {}
    assert (m["entity_precision"], m["entity_recall"]) == pytest.approx((0.5, 1.0))
    assert m["answer_accuracy"] == 1.0
    with pytest.raises(ValueError):
        compute_metrics(preds, [], None, LEXICON)
