"""Device rewards over token ids vs their plain-Python twins on decoded text (SPEC §6, defect 4)."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pathreasoner_jax.grpo import rewards as R
from benchmarks.torch_baseline import rewards as RT
from pathreasoner_jax.tokenizer import FORMAT_TAGS, load_tokenizer, special_ids, train_demo_tokenizer

ENTITIES = ["invasive ductal carcinoma", "ductal carcinoma in situ", "carcinoma", "lymphovascular invasion",
            "necrosis", "nuclear pleomorphism", "mitotic figures", "adenocarcinoma", "squamous cell carcinoma",
            "Gleason pattern 4", "HER2-positive", "tumor-infiltrating lymphocytes", "signet ring cells",
            "desmoplastic stroma", "small cell carcinoma"]
SYNONYMS = [("IDC", 0), ("DCIS", 1), ("LVI", 3), ("TILs", 11), ("SCC", 8), ("SCC", 14)]  # SCC: ambiguous
SURFACES = [(s, i) for i, s in enumerate(ENTITIES)] + SYNONYMS
E = len(ENTITIES)
FOUND, FORMAT, ROUGE = jax.jit(R.entities_found), jax.jit(R.format_reward), jax.jit(R.rouge_l)
DICE = jax.jit(R.entity_dice)
WORDS = ["the", "tumor", "cells", "show", "with", "and", "of", "atypical", "glands", "stroma", "patient's",
         "biopsy", "grade", "high", "low", "x", "3", "is", "in", "consistent", "features", "margin", "nuclei"]
WS = ["", " ", "\n", "\n\n", " \n", "\t"]
# Qwen2's pre-tokenizer: letters may carry one leading non-letter ("(carcinoma" is one piece)
QWEN_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus():
    rng = random.Random(1)
    out = []
    for _ in range(300):  # entity names appear rarely, so BPE splits most into several tokens
        out.append(" ".join(rng.choice(WORDS) for _ in range(12)) + ".")
    out += [f"<observe>{s}</observe>\n<think>the {s.lower()}</think>\n<answer>{s}</answer>" for s in ENTITIES[:3]]
    return out


def _train_qwen_style(texts, out_dir, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from pathreasoner_jax.tokenizer import IMAGE_TOKEN, QWEN_CHAT_TEMPLATE, SPECIAL_TOKENS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PAT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=[IMAGE_TOKEN] + FORMAT_TAGS + ["<|im_start|>"])
    fast.chat_template = QWEN_CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session", params=["gpt2", "qwen"])
def rw(request, tmp_path_factory):
    """A small tokenizer (GPT-2- or Qwen-style pre-tokenizer), its tables and the lexicon."""
    d = str(tmp_path_factory.mktemp(f"tok_{request.param}") / "tok")
    if request.param == "gpt2":
        train_demo_tokenizer(_corpus(), d, vocab_size=400)
    else:
        _train_qwen_style(_corpus(), d, vocab_size=400)
    tok = load_tokenizer(d)
    sid = special_ids(tok)
    rng = np.random.default_rng(0)
    sim = rng.uniform(0, 1, (E, E)) * (rng.uniform(0, 1, (E, E)) < 0.5)
    sim = np.maximum(sim, sim.T).astype(np.float32)
    np.fill_diagonal(sim, 1.0)
    return dict(name=request.param, tok=tok, sid=sid, tables=R.build_token_tables(tok, sid, len(tok) + 7),
                lex=R.compile_lexicon(tok, SURFACES, E), matcher=RT.entity_matcher(SURFACES), sim=sim)


def _enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def _pad(rows, width, fill=0):
    a = np.full((len(rows), width), fill, np.int32)
    m = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        a[i, :len(r)], m[i, :len(r)] = r, 1
    return a, m


# ------------------------------------------------------------------ random completions
def _mention(rng):
    s, _ = rng.choice(SURFACES)
    s = rng.choice([s, s, s.lower(), s[:1].upper() + s[1:], s.upper(), s.title()])
    before = rng.choice(["", "", "", "(", '"', "-", "/", "[", "\t", "adeno", "3", " "])  # never an apostrophe
    after = rng.choice(["", "", "", ")", ",", ".", ";", "s", "3", "-like", ":"])
    return before + s + after


def _content(rng, n=None):
    parts = []
    for _ in range(n if n is not None else rng.randint(0, 8)):
        parts.append(_mention(rng) if rng.random() < 0.35 else rng.choice(WORDS))
    return "".join(p + rng.choice([" ", " ", " ", ", ", "\n", "  "]) for p in parts).rstrip(" ")


def _completion(rng):
    obs, thk, ans = _content(rng), _content(rng), _content(rng, rng.randint(0, 4))
    w = [rng.choice(WS) for _ in range(4)]
    blocks = [f"<observe>{obs}</observe>", f"<think>{thk}</think>", f"<answer>{ans}</answer>"]
    kind = rng.choice(["good"] * 4 + ["missing", "repeat", "order", "between", "after", "before",
                                      "none", "nested", "empty", "unclosed"])
    if kind == "missing":
        blocks[rng.randrange(3)] = rng.choice([obs, thk]) if rng.random() < 0.5 else blocks[0].replace("</observe>", "")
    elif kind == "repeat":
        i = rng.randrange(3)
        blocks.insert(rng.randrange(4), blocks[i])
    elif kind == "order":
        blocks[0], blocks[1] = blocks[1], blocks[0]
    elif kind == "between":
        w[rng.randrange(1, 3)] = " " + rng.choice(WORDS) + " "
    elif kind == "after":
        w[3] = " " + _content(rng, 2) + "x"
    elif kind == "before":
        w[0] = rng.choice(WORDS) + " "
    elif kind == "none":  # as if the tags were only in the prompt
        return _content(rng, 10)
    elif kind == "nested":
        blocks[1] = f"<think>{thk} <observe> {obs}</think>"
    elif kind == "empty":
        blocks = ["<observe></observe>", "<think></think>", "<answer></answer>"]
    elif kind == "unclosed":
        blocks[2] = f"<answer>{ans}"
    body = w[0] + blocks[0]
    for i, b in enumerate(blocks[1:]):
        body += w[min(i + 1, 2)] + b
    return body + w[3]


def _batch(rw, n, seed):
    rng = random.Random(seed)
    tok, sid = rw["tok"], rw["sid"]
    texts = [_completion(rng) for _ in range(n)]
    rows = []
    for t in texts:
        ids = _enc(tok, t)
        if rng.random() < 0.8:
            ids.append(sid.eos)  # the mask covers the first EOS
        rows.append(ids)
    width = max(len(r) for r in rows) + 6
    ids, mask = _pad(rows, width, fill=sid.pad)
    # garbage past the mask (tags, EOS, words) must be ignored
    for i, r in enumerate(rows):
        for j in range(len(r), width):
            ids[i, j] = rng.choice(list(sid.tags) + [sid.eos, sid.pad, 40, 41])
    refs = [_content(rng, rng.randint(1, 4)) for _ in range(n)]
    ref_ids, ref_mask = _pad([_enc(tok, r) for r in refs], max(len(_enc(tok, r)) for r in refs) + 1)
    gts = [set(rng.sample(range(E), rng.choice([0, 1, 2, 3, 5]))) for _ in range(n)]
    return texts, ids, mask, ref_ids, ref_mask, refs, gts, _ctx(gts, rw["sim"])


def _ctx(gt_sets, sim, k=8, m=E):
    """The sparse entity context from a dense similarity, by brute force over every pair."""
    n = len(gt_sets)
    ctx = {"gt_ids": np.full((n, k), -1, np.int32), "near_ids": np.full((n, m), -1, np.int32),
           "near_sim": np.zeros((n, m), np.float32)}
    for r, g in enumerate(gt_sets):
        ctx["gt_ids"][r, :len(g)] = sorted(g)
        near = [(e, max(float(sim[e][x]) for x in g)) for e in range(len(sim)) if e not in g and g]
        near = [(e, v) for e, v in near if v > 0]
        for j, (e, v) in enumerate(near):
            ctx["near_ids"][r, j], ctx["near_sim"][r, j] = e, v
    return {key: jnp.asarray(v) for key, v in ctx.items()}


def test_entities_span_several_tokens(rw):
    tok = rw["tok"]
    assert len(_enc(tok, "invasive ductal carcinoma")) >= 3
    assert len(_enc(tok, "lymphovascular")) >= 2
    assert len(_enc(tok, " tumor-infiltrating lymphocytes")) >= 4


def test_device_rewards_equal_python_twins(rw):
    n = 240
    texts, ids, mask, ref_ids, ref_mask, refs, gts, ctx = _batch(rw, n, seed=7)
    tok, sid = rw["tok"], rw["sid"]
    out = R.compute_rewards(jnp.asarray(ids), jnp.asarray(mask), ctx, rw["tables"], rw["lex"], jnp.asarray(ref_ids), jnp.asarray(ref_mask),
                            alpha=0.5, beta=0.5)
    out = {k: np.asarray(v) for k, v in out.items()}
    twin = RT.rewards_text(tok, ids, mask, gts, rw["sim"], refs, rw["matcher"], alpha=0.5, beta=0.5,
                           eos_text=tok.convert_ids_to_tokens(sid.eos), pad_text=tok.convert_ids_to_tokens(sid.pad))
    np.testing.assert_array_equal(out["format"], np.asarray(twin["format"], np.float32))
    for k in ("entity", "semantic", "total"):
        np.testing.assert_allclose(out[k], np.asarray(twin[k]), atol=1e-6, err_msg=k)
    # the same found-entity sets, not just the same Dice
    found = np.asarray(FOUND(jnp.asarray(ids), jnp.asarray(mask), rw["tables"], rw["lex"]))
    for i, t in enumerate(texts):
        text = RT.decode_completion(tok, ids[i], mask[i])
        assert set(np.flatnonzero(found[i])) == RT.entities_text(text, rw["matcher"]), t
    # the random set exercises every branch
    assert 0.2 < out["format"].mean() < 0.8
    assert (out["entity"] > 0).sum() > 30 and (out["semantic"] > 0).sum() > 20
    # the ablation's weights: total = w_f·format + w_s·semantic + alpha·entity
    w = R.compute_rewards(jnp.asarray(ids), jnp.asarray(mask), ctx, rw["tables"], rw["lex"], jnp.asarray(ref_ids),
                          jnp.asarray(ref_mask), alpha=0.0, beta=0.5, format_weight=1.0, semantic_weight=0.0)
    np.testing.assert_array_equal(np.asarray(w["total"]), np.asarray(twin["format"], np.float32))
    w = R.compute_rewards(jnp.asarray(ids), jnp.asarray(mask), ctx, rw["tables"], rw["lex"], jnp.asarray(ref_ids),
                          jnp.asarray(ref_mask), alpha=0.25, beta=0.5, format_weight=0.5, semantic_weight=2.0)
    want = 0.5 * np.asarray(twin["format"]) + 2.0 * np.asarray(twin["semantic"]) + 0.25 * np.asarray(twin["entity"])
    np.testing.assert_allclose(np.asarray(w["total"]), want, atol=1e-6)
    multi = [i for i, s in enumerate(ENTITIES) if len(_enc(tok, s)) >= 3]
    assert found[:, multi].sum() >= 10  # multi-token entities found


def test_format_hand_cases(rw):
    tok, sid = rw["tok"], rw["sid"]
    good = "<observe>a b</observe>\n<think>c</think> <answer>d</answer>"
    cases = {
        good: 1, "\n" + good + " \n": 1, good + "<|im_end|>": 1,
        "<observe></observe><think></think><answer></answer>": 1,
        good + " e": 0, "a " + good: 0,
        "<observe>a</observe> so <think>c</think><answer>d</answer>": 0,
        "<observe>a</observe><think>c</think><answer>d</answer><answer>d</answer>": 0,
        "<think>c</think><observe>a</observe><answer>d</answer>": 0,
        "<observe>a</observe><think>c</think>": 0,
        "<observe>a <think></observe><think>c</think><answer>d</answer>": 0,
        "<info>a</info><think>c</think><answer>d</answer>": 0,
    }
    rows = [_enc(tok, t) for t in cases]
    ids, mask = _pad(rows, max(map(len, rows)) + 2, fill=sid.pad)
    got = np.asarray(FORMAT(jnp.asarray(ids), jnp.asarray(mask), rw["tables"]))
    np.testing.assert_array_equal(got, np.asarray(list(cases.values()), np.float32))
    assert [RT.format_reward_text(t) for t in cases] == list(cases.values())


def test_format_never_reads_the_prompt(rw):
    """Defect 4: a perfectly formatted prompt (masked out) must not earn the format reward."""
    tok, sid = rw["tok"], rw["sid"]
    prompt = _enc(tok, "<|im_start|>user\nAnswer as <observe>…</observe><think>…</think>"
                       "<answer>…</answer><|im_end|>\n<|im_start|>assistant\n")
    bad = _enc(tok, "the tumor is a carcinoma") + [sid.eos]
    good = _enc(tok, "<observe>x</observe><think>y</think><answer>z</answer>") + [sid.eos]
    rows = [prompt + bad, prompt + good, bad, good]
    ids, _ = _pad(rows, max(map(len, rows)), fill=sid.pad)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        start = len(prompt) if i < 2 else 0
        mask[i, start:len(r)] = 1
    got = np.asarray(FORMAT(jnp.asarray(ids), jnp.asarray(mask), rw["tables"]))
    np.testing.assert_array_equal(got, [0.0, 1.0, 0.0, 1.0])
    # the prompt alone, unmasked, is not a well-formed completion either
    p_ids, p_mask = _pad([prompt], len(prompt))
    assert float(FORMAT(jnp.asarray(p_ids), jnp.asarray(p_mask), rw["tables"])[0]) == 0.0


def _dice(p_rows, gt_sets, sim, beta=0.5):
    ctx = _ctx(gt_sets, sim, k=4, m=len(sim))
    return np.asarray(DICE(jnp.asarray(np.asarray(p_rows, bool)), ctx["gt_ids"], ctx["near_ids"],
                           ctx["near_sim"], beta))


def test_entity_dice_hand_numbers():
    sim = np.zeros((5, 5), np.float32)
    sim[3, 0], sim[3, 1], sim[4, 1] = 0.8, 0.4, 0.5
    sim = np.maximum(sim, sim.T)
    p = [[1, 1, 0, 0, 0], [1, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [1, 1, 1, 1, 1]]
    g = [{0, 1}, {0, 1}, set(), set(), {0}]
    # row1: 2(1 + .5(.8 + .5))/(3+2) = .66; row3: P only → 0; row4: 2(1 + .5·.8)/(5+1) = .4667
    np.testing.assert_allclose(_dice(p, g, sim), [1.0, 0.66, 0.0, 0.0, 2 * 1.4 / 6], atol=1e-6)
    # capped at 1 (the soft term can push Dice past 1 only through sim > 1, e.g. unnormalised KG scores)
    assert float(_dice(p[1:2], g[1:2], np.full((5, 5), 5.0, np.float32))[0]) == 1.0
    # a context list cut short drops the least similar neighbour only: row 1 with m = 1 keeps .8
    ctx = _ctx(g[1:2], sim, k=4, m=5)
    order = np.argsort(-np.asarray(ctx["near_sim"][0]), kind="stable")[:1]
    got = DICE(jnp.asarray(np.asarray(p[1:2], bool)), ctx["gt_ids"], ctx["near_ids"][:, order],
               ctx["near_sim"][:, order], 0.5)
    assert abs(float(got[0]) - 2 * (1 + 0.5 * 0.8) / 5) < 1e-6


def test_padding_with_neighbours_never_beats_the_exact_answer(tmp_path):
    """Anti-gaming (the KG similarity of data_prep.entities): listing neighbours of G on top
    of the exact answer lowers the entity Dice, and neighbours alone stay at most 0.5."""
    from data_prep.entities import write_entities
    from data_prep.kg_graph import KnowledgeGraph
    from pathreasoner_jax.data.store import load_entities
    kg = KnowledgeGraph()
    names = [f"n{i}" for i in range(12)]
    for n in names:
        kg.add_entity(n, n, "finding")
    for i in range(1, 12):  # a star around n0 and a chain n1–n2–…–n11
        kg.add_relation("n0", "r", names[i])
        if i > 1:
            kg.add_relation(names[i - 1], "r", names[i])
    write_entities(str(tmp_path / "entities.json"), kg)
    ents = load_entities(str(tmp_path))
    idx = {n: i for i, n in enumerate(ents.names)}
    gt = {idx["n0"], idx["n5"]}
    near = [e for e, _ in ents.near(gt)]
    assert len(near) == 10 and all(s <= 0.5 for _, s in ents.near(gt))
    ctx = {k: jnp.asarray(v) for k, v in ents.context([gt] * (len(near) + 1), 4, 16).items()}
    exact_plus = np.zeros((len(near) + 1, len(names)), bool)
    alone = np.zeros_like(exact_plus)
    for k in range(len(near) + 1):
        exact_plus[k, list(gt)] = True
        exact_plus[k, near[:k]] = True
        alone[k, near[:k]] = True
    d_plus = np.asarray(DICE(jnp.asarray(exact_plus), ctx["gt_ids"], ctx["near_ids"], ctx["near_sim"], 0.5))
    d_alone = np.asarray(DICE(jnp.asarray(alone), ctx["gt_ids"], ctx["near_ids"], ctx["near_sim"], 0.5))
    assert d_plus[0] == 1.0 and np.all(np.diff(d_plus) < 0)  # every extra neighbour costs
    assert d_alone.max() <= 0.5 and np.all(d_alone < d_plus)
    # hand number: G = {n0, n5} + 2 direct neighbours (0.5 each): 2(2 + .5(.5 + .5))/(4 + 2) = .8333
    assert abs(d_plus[2] - 2 * 2.5 / 6) < 1e-6


def test_lcs_scan_matches_textbook_dp():
    rng = np.random.default_rng(3)
    b, t, r = 64, 30, 20
    ws = np.zeros(16, bool)
    tables = R.TokenTables(ws_v=jnp.asarray(ws), first_alnum_v=jnp.asarray(ws), last_alnum_v=jnp.asarray(ws),
                           tags=(10, 11, 12, 13, 14, 15), eos=9, pad=8)
    ids = rng.integers(0, 5, (b, t)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 14, 15  # answer span = 1 … t-2
    n_ref = rng.integers(1, r + 1, b)
    ref = rng.integers(0, 5, (b, r)).astype(np.int32)
    ref_mask = (np.arange(r) < n_ref[:, None]).astype(np.int32)
    got = np.asarray(ROUGE(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)), jnp.asarray(ref),
                               jnp.asarray(ref_mask), tables))
    for i in range(b):
        lcs = RT.lcs_len(list(ids[i, 1:-1]), list(ref[i, :n_ref[i]]))
        assert abs(got[i] - 2 * lcs / (t - 2 + n_ref[i])) < 1e-6
    # hand example: LCS("a b c d", "b d e") = 2 → F1 = 4/7
    ids2 = np.array([[14, 1, 2, 3, 4, 15]], np.int32)
    ref2 = np.array([[2, 4, 5]], np.int32)
    got2 = ROUGE(jnp.asarray(ids2), jnp.ones_like(jnp.asarray(ids2)), jnp.asarray(ref2), jnp.ones((1, 3)), tables)
    assert abs(float(got2[0]) - 4 / 7) < 1e-6


def test_whitespace_table(rw):
    tok, tables = rw["tok"], rw["tables"]
    ws = np.asarray(tables.ws_v)
    assert ws.shape[0] == len(tok) + 7 and not ws[len(tok):].any()  # a padded model vocab is content
    for i in np.flatnonzero(ws):
        assert tok.decode([int(i)]).isspace()
    assert not ws[list(rw["sid"].tags) + [rw["sid"].eos, rw["sid"].pad]].any()
    assert ws[_enc(tok, "\n")].all()


def test_semantic_scores_from_the_caller(rw):
    """semantic="judge"/"self": the caller's scores enter the total (alpha·entity + format + semantic)."""
    tok, sid = rw["tok"], rw["sid"]
    rows = [_enc(tok, "<observe>necrosis</observe><think>carcinoma</think><answer>IDC</answer>") + [sid.eos],
            _enc(tok, "no tags at all, necrosis")]
    ids, mask = _pad(rows, max(map(len, rows)), fill=sid.pad)
    ctx = _ctx([{4}, {4}], rw["sim"])  # G = {necrosis}
    args = (jnp.asarray(ids), jnp.asarray(mask), ctx, rw["tables"], rw["lex"])
    out = R.compute_rewards(*args, semantic_b=jnp.array([0.25, 0.75]), semantic="judge", alpha=0.5)
    d0 = 2 * (1 + 0.5 * rw["sim"][2, 4]) / (2 + 1)  # P = {necrosis, carcinoma}, G = {necrosis}
    np.testing.assert_allclose(np.asarray(out["entity"]), [d0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["total"]), [1 + 0.25 + 0.5 * d0, 0.75], atol=1e-6)
    with pytest.raises(ValueError):
        R.compute_rewards(*args, semantic="judge")
