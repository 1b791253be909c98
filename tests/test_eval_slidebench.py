"""SlideBench-VQA: CSV in the published column layout → per-category accuracy = hand count."""
import csv

import pytest

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.eval.slidebench import (
    build_mc_prompt, load_slidebench_csv, parse_choice, score_slidebench)

HEADER = ["ID", "Slide", "Tumor", "Broad Category", "Narrow Category", "Question",
          "A", "B", "C", "D", "Answer"]
OPTS = {"A": "Squamous cell carcinoma", "B": "Adenocarcinoma", "C": "Small cell carcinoma",
        "D": "Large cell carcinoma"}

# (ID, broad, narrow, gold letter, completion, is the completion right?)
ROWS = [
    (1, "Microscopy", "Tissue", "B", "<observe>o</observe><think>t</think><answer>B</answer>", True),
    (2, "Microscopy", "Tissue", "A", "<observe>o</observe><think>t</think><answer>(A)</answer>", True),
    (3, "Microscopy", "Cell", "C", "<observe>o</observe><think>t</think><answer>B. Adenocarcinoma</answer>", False),
    (4, "Diagnosis", "Subtype", "D", "<answer>The answer is d</answer>", True),
    (5, "Diagnosis", "Subtype", "B", "<observe>o</observe><think>t</think><answer>Adenocarcinoma</answer>", True),
    (6, "Diagnosis", "Grade", "A", "<answer>I am not sure</answer>", False),   # unparsable
    (7, "Clinical", "Treatment", "C", "<answer>Option C</answer>", True),
    (8, "Clinical", "Prognosis", "A", "<answer>c</answer>", False),
]
# Hand count: Microscopy 2/3, Diagnosis 2/3, Clinical 1/2, overall 5/8.


def write_csv(path, header=HEADER, rows=ROWS):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for id_, broad, narrow, gold, _, _ in rows:
            row = {"ID": id_, "Slide": f"TCGA-XX-{id_:04d}", "Tumor": "LUAD", "Broad Category": broad,
                   "Narrow Category": narrow, "Question": "What is the most likely diagnosis?",
                   **OPTS, "Answer": gold}
            w.writerow([row[h] for h in header])
    return str(path)


def test_per_category_accuracy_equals_hand_count(tmp_path):
    items = load_slidebench_csv(write_csv(tmp_path / "SlideBench-VQA (TCGA).csv"))
    assert len(items) == 8
    assert items[0].options == OPTS and items[0].answer == "B" and items[0].slide == "TCGA-XX-0001"
    result = score_slidebench(items, [r[4] for r in ROWS])
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["n"] == 8
    assert result["n_unparsed"] == 1
    assert result["per_category"] == {
        "Clinical": {"accuracy": pytest.approx(1 / 2), "n": 2},
        "Diagnosis": {"accuracy": pytest.approx(2 / 3), "n": 3},
        "Microscopy": {"accuracy": pytest.approx(2 / 3), "n": 3},
    }
    assert result["per_narrow_category"]["Subtype"] == {"accuracy": 1.0, "n": 2}
    assert [r[5] for r in ROWS] == [p == r[3] for p, r in zip(result["predictions"], ROWS)]


def test_missing_column_is_one_line_error_naming_file_and_column(tmp_path):
    path = write_csv(tmp_path / "bench.csv", header=[h for h in HEADER if h != "Broad Category"])
    with pytest.raises(UserError) as e:
        load_slidebench_csv(path)
    msg = str(e.value)
    assert "\n" not in msg and "bench.csv" in msg and "'Broad Category'" in msg


def test_missing_column_through_cli_exit_code(tmp_path, capsys, monkeypatch):
    # Routed through the real CLI entry point: one line on stderr, exit code 2, no traceback.
    import sys
    import types

    from pathreasoner_jax import cli

    path = write_csv(tmp_path / "bench.csv", header=[h for h in HEADER if h != "Answer"])
    fake = types.ModuleType("fake_eval_cli")
    fake.run = lambda args: load_slidebench_csv(path)
    monkeypatch.setitem(sys.modules, "fake_eval_cli", fake)
    monkeypatch.setitem(cli.COMMANDS, "eval", ("fake_eval_cli:run", "eval"))
    assert cli.main(["eval", "--config", "unused.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "bench.csv" in err and "'Answer'" in err


def test_bad_answer_and_missing_file(tmp_path):
    rows = [(1, "Clinical", "x", "E", "", False)]
    with pytest.raises(UserError, match="line 2"):
        load_slidebench_csv(write_csv(tmp_path / "b.csv", rows=rows))
    with pytest.raises(UserError, match="not found"):
        load_slidebench_csv(str(tmp_path / "absent.csv"))


def test_answer_given_as_option_text_and_bom(tmp_path):
    path = tmp_path / "t.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # Excel-style BOM
        csv.writer(f).writerows([HEADER, [1, "s", "t", "Diagnosis", "n", "q", "x", "y", "z", "", "y"]])
    (item,) = load_slidebench_csv(str(path))
    assert item.answer == "B" and item.options == {"A": "x", "B": "y", "C": "z"}


@pytest.mark.parametrize("answer,expected", [
    ("B", "B"), ("b", "B"), ("(C)", "C"), ("**D.**", "D"), ("B. Adenocarcinoma", "B"),
    ("(A) squamous", "A"), ("c) small cell", "C"), ("The answer is b", "B"),
    ("The correct option is (D) because ...", "D"), ("answer: C", "C"),
    ("Adenocarcinoma", "B"), ("lung adenocarcinoma, acinar predominant", "B"),
    ("small cell carcinoma", "C"),                  # not "Large cell" / not "carcinoma" alone
    ("A tumour with glands", None),                 # article, not option A
    ("the answer is a tumour", None),
    ("B cells only", None),                         # "B cells" is not option B
    ("I choose D", "D"), ("", None), ("E", None),
])
def test_parse_choice(answer, expected):
    assert parse_choice(f"<observe>o</observe><think>t</think><answer>{answer}</answer>", OPTS) == expected


def test_parse_choice_without_answer_tag():
    assert parse_choice("B", OPTS) == "B"
    assert parse_choice("<think>It looks like B</think><answer>Adenocarcinoma", OPTS) == "B"  # cut off


def test_prompt_lists_options_and_format():
    p = build_mc_prompt("What is it?", OPTS)
    assert p.splitlines()[:5] == ["What is it?", "A. Squamous cell carcinoma", "B. Adenocarcinoma",
                                  "C. Small cell carcinoma", "D. Large cell carcinoma"]
    assert "<answer>" in p
