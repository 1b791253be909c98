"""WSI-VQA: the released JSON layout (Id/Question/Choice/Answer) and tolerant variants."""
import json

import pytest

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.eval.wsivqa import load_wsivqa_json, score_wsivqa, wsivqa_prompt

# The released format: closed questions carry "Choice" (texts) and "Answer" (the right text).
RELEASED = [
    {"Id": "TCGA-LD-A74U", "Question": "what is the patient's diagnosis?",
     "Choice": ["ductal carcinoma in situ", "invasive ductal carcinoma", "invasive lobular carcinoma",
                "metastatic carcinoma"], "Answer": "invasive lobular carcinoma"},
    {"Id": "TCGA-LD-A74U", "Question": "is there any in-situ component in the tumor?",
     "Choice": ["yes", "no", "not mentioned", "cannot be determined"], "Answer": "no"},
    {"Id": "TCGA-AR-A1AI", "Question": "what type of breast cancer does jeb have?",
     "Choice": ["medullary carcinoma", "invasive ductal carcinoma", "lobular carcinoma",
                "inflammatory breast cancer."], "Answer": "inflammatory breast cancer"},
    {"Id": "TCGA-AR-A1AI", "Question": "what is the result of vital_status in the slide?", "Answer": "Alive"},
    {"Id": "TCGA-AR-A1AI", "Question": "what is her2 according to the slide?", "Answer": "2+"},
]
COMPLETIONS = [
    "<observe>o</observe><think>t</think><answer>C</answer>",                     # right (letter)
    "<observe>o</observe><think>t</think><answer>A</answer>",                     # wrong: A = yes
    "<observe>o</observe><think>t</think><answer>Inflammatory breast cancer</answer>",  # right (text)
    "<observe>o</observe><think>t</think><answer>alive.</answer>",                # right (open, normalised)
    "<observe>o</observe><think>t</think><answer>3+</answer>",                    # wrong
]
# Hand count: closed 2/3, open 1/2, overall 3/5.


def test_released_format_hand_count(tmp_path):
    path = tmp_path / "WsiVQA_test.json"
    path.write_text(json.dumps(RELEASED))
    items = load_wsivqa_json(str(path))
    assert [bool(it.options) for it in items] == [True, True, True, False, False]
    assert items[0].options["C"] == "invasive lobular carcinoma" and items[0].slide == "TCGA-LD-A74U"
    assert "C. invasive lobular carcinoma" in wsivqa_prompt(items[0])
    assert wsivqa_prompt(items[3]) == "what is the result of vital_status in the slide?"
    r = score_wsivqa(items, COMPLETIONS)
    assert r["accuracy"] == pytest.approx(3 / 5) and r["n"] == 5
    assert r["closed"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert r["open"] == {"accuracy": pytest.approx(1 / 2), "n": 2}
    assert r["per_category"]["closed"]["n"] == 3
    assert r["predictions"][:3] == ["C", "A", "D"]


def test_tolerant_field_mapping_jsonl_dict_options_letter_answer(tmp_path):
    path = tmp_path / "vqa.jsonl"
    recs = [
        {"question_id": "q1", "slide_id": "S1", "question": "Grade?", "options": {"a": "1", "b": "2"},
         "answer": "B", "category": "Grading"},
        {"id": "q2", "image": "S2", "q": "Stage?", "choices": "A. pT1 B. pT2 C. pT3", "gt": "pT3"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    a, b = load_wsivqa_json(str(path))
    assert (a.id, a.slide, a.options, a.broad_category) == ("q1", "S1", {"A": "1", "B": "2"}, "Grading")
    assert (b.id, b.slide, b.options, b.answer) == ("q2", "S2", {"A": "pT1", "B": "pT2", "C": "pT3"}, "pT3")
    r = score_wsivqa([a, b], ["<answer>(B)</answer>", "<answer>B</answer>"])
    assert r["accuracy"] == pytest.approx(0.5) and r["per_category"]["Grading"]["accuracy"] == 1.0


def test_wrapped_list_and_errors(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": [{"Question": "q", "Answer": "a"}]}))
    (item,) = load_wsivqa_json(str(path))
    assert item.id == "0" and item.broad_category == "open"
    path.write_text(json.dumps([{"Question": "q"}]))
    with pytest.raises(UserError, match="item 0 has no answer field"):
        load_wsivqa_json(str(path))
    path.write_text("{not json")
    with pytest.raises(UserError, match="wrapped.json"):
        load_wsivqa_json(str(path))
