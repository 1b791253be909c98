"""Loss masks: assistant tokens only, trajectory masking in `loss` and `drop` modes."""
import itertools

import numpy as np
import pytest

from pathreasoner_jax.data.encode import ExampleEncoder, collate
from pathreasoner_jax.data.slide_chunks import evenly_spaced_patches
from pathreasoner_jax.records import SampleRecord, SlideRecord, format_trajectory
from sft_fixtures import make_tokenizer

FINDINGS = ["gland crowding", "nuclear atypia"]
REASONING = ["crowded atypical glands suggest carcinoma", "keratinisation suggests squamous"]
ANSWER = "adenocarcinoma"


@pytest.fixture(scope="module")
def tok_ids(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _sample():
    return SampleRecord("s", "slide", "train", "What is the diagnosis? <image>", FINDINGS, REASONING, ANSWER)


def _slide(n=5):
    return SlideRecord("slide", np.zeros((n, 4), np.float32), np.arange(n * 2).reshape(n, 2), np.zeros(n))


def _weighted_text(tok, ex):
    return tok.decode([int(t) for t, w in zip(ex.ids, ex.weight) if w > 0], skip_special_tokens=False)


def _expected(f_keep, r_keep):
    return format_trajectory(f_keep, r_keep, ANSWER) + "<|im_end|>"


def test_no_masking_weights_exactly_the_assistant_tokens(tok_ids):
    tok, ids = tok_ids
    enc = ExampleEncoder(tok, ids.image, sample_num=16)
    ex = enc.encode(_sample(), _slide(5), np.random.default_rng(0))
    assert _weighted_text(tok, ex) == _expected(FINDINGS, REASONING)
    # the prompt (with the 5 image tokens) carries no weight and ends with the assistant header
    assert np.sum(ex.ids[: ex.prompt_len] == ids.image) == 5
    assert not ex.weight[: ex.prompt_len].any()
    assert tok.decode(ex.ids[: ex.prompt_len].tolist()).endswith("<|im_start|>assistant\n")


def _subsets():
    steps = [("f", i) for i in range(2)] + [("r", i) for i in range(2)]
    for k in range(5):
        yield from itertools.combinations(steps, k)


@pytest.mark.parametrize("mode", ["loss", "drop"])
def test_masked_steps_lose_weight_answer_never(tok_ids, mode):
    tok, ids = tok_ids
    enc = ExampleEncoder(tok, ids.image, sample_num=16, mask_mode=mode, mask_rate=0.5)
    full_prompt = None
    seen = set()
    for seed in range(12):
        ex = enc.encode(_sample(), _slide(3), np.random.default_rng(seed))
        got = _weighted_text(tok, ex)
        matches = []
        for sub in _subsets():
            f_keep = [f for i, f in enumerate(FINDINGS) if ("f", i) not in sub]
            r_keep = [r for i, r in enumerate(REASONING) if ("r", i) not in sub]
            if mode == "loss":
                # masked steps stay in the input: the full trajectory is there, only weights differ
                full = tok.decode(ex.ids[ex.prompt_len:].tolist(), skip_special_tokens=False)
                assert full == _expected(FINDINGS, REASONING)
                want = _expected(f_keep, r_keep).replace("<observe>\n", "<observe>").replace("<think>\n", "<think>")
                got_cmp = got.replace("\n", "")
                if got_cmp == want.replace("\n", ""):
                    matches.append(sub)
            else:
                full = tok.decode(ex.ids[ex.prompt_len:].tolist(), skip_special_tokens=False)
                if full == _expected(f_keep, r_keep) and got == full:
                    matches.append(sub)
        assert matches, (seed, got)
        assert f"<answer>{ANSWER}</answer>" in got
        seen.add(len(matches[0]))
        if full_prompt is None:
            full_prompt = ex.ids[: ex.prompt_len]
        np.testing.assert_array_equal(ex.ids[: ex.prompt_len], full_prompt)  # masking never touches the prompt
        assert not ex.weight[: ex.prompt_len].any()
    assert len(seen) > 1  # different seeds mask different numbers of steps


def test_collate_shifts_weights_onto_targets(tok_ids):
    tok, ids = tok_ids
    enc = ExampleEncoder(tok, ids.image, sample_num=16)
    slides = [_slide(5), _slide(3)]
    exs = [enc.encode(_sample(), s, np.random.default_rng(0)) for s in slides]
    batch, truncated = collate(exs, slides, [64, 128, 256], 16, ids.pad)
    assert truncated == 0
    for row, ex in enumerate(exs):
        n = len(ex.ids)
        # position t predicts ids[t+1] with the weight of ids[t+1]
        np.testing.assert_array_equal(batch["targets"][row, : n - 1], ex.ids[1:])
        np.testing.assert_array_equal(batch["loss_weight"][row, : n - 1], ex.weight[1:])
        assert not batch["loss_weight"][row, n - 1:].any()
        assert batch["text_valid"][row].sum() == n
        assert batch["patch_valid"][row].sum() == len(ex.patch_idx)


def test_sample_num_keeps_evenly_spaced_rows_in_coordinate_order():
    # 10 patches stored out of order; coordinate order (y, x) is rows 9, 8, ..., 0
    coords = np.array([[0, 9 - i] for i in range(10)])
    idx = evenly_spaced_patches(coords, np.arange(10), 4)
    ordered = list(range(9, -1, -1))
    assert idx.tolist() == [ordered[j] for j in np.linspace(0, 9, 4).round().astype(int)]
