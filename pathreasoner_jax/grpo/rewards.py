"""Per-completion rewards on device over token ids (SPEC §6), batched and jitted.

Every function here takes the *completion* ids and the completion mask only (never the
prompt: the reference's defect 4); positions with mask 0 are ignored, so a caller that
passes prompt + completion with a completion-only mask gets the same rewards.
Each reward has a plain-Python twin on decoded text in `benchmarks/torch_baseline/rewards.py`; the tests
check that both agree on hundreds of random completions.

Rules (the twins implement the same ones on text):

* Whitespace token: a vocab id whose decoded text is non-empty and `str.isspace()`
  (`TokenTables.ws_v`). Special tokens (tags, EOS, pad) are never whitespace; ids at or
  beyond the tokenizer's length (a model vocab padded past it) count as content.
* Format = 1 iff the valid tokens are, in order:
  ws* <observe> x* </observe> ws* <think> x* </think> ws* <answer> x* </answer> (ws|EOS|pad)*
  with each of the six tags exactly once (so x* holds no tag). Leading whitespace and
  trailing whitespace/EOS/pad are allowed (as `text.strip()` would); empty blocks are
  allowed. Text twin: a `re.fullmatch` of the same pattern plus a count of each tag.
* Span of a tag pair: the tokens strictly between the first <X> and the first </X> after
  it; empty when either is missing. (Text: `re.search("<X>(.*?)</X>", DOTALL)`.) Unlike
  the reference we do not fall back to the whole text when a span is missing.
* Entity mention: entity e is mentioned when one of its surface forms occurs inside the
  observe span or inside the think span (not across them), case-sensitively, in one of
  three case variants (as written, all lower-case, first letter upper-case), at a word
  boundary: the character before the occurrence and the first character of the surface
  are not both alphanumeric, and likewise the last character of the surface and the
  character after it (`str.isalnum`; span edges are boundaries).
  On token ids: each variant v is compiled to `tok.encode(v)` and, for each prefix
  character c in `prefixes` (space, tab and ASCII punctuation by default) for which the
  tokenizer merges c into v's first token (encode(c+v) != encode(c)+encode(v), e.g. GPT-2's
  " carcinoma" or Qwen's "(carcinoma"), to encode(c+v). A pattern matches where its ids
  occur contiguously inside one span and the neighbouring tokens pass the boundary test
  (the last char of the token before, the first char of the token after).
  Token and text rules agree whenever the text around a mention tokenizes as the
  compiled variants do, i.e. always for text the tokenizer produced, except (a) right
  after an apostrophe contraction the pre-tokenizer glues letters to ("'s", "'t", "'d",
  "'m", "'ll", "'re", "'ve" directly before a surface), (b) a non-ASCII character split
  across byte tokens at the edge of a mention (a byte fragment counts as non-alphanumeric),
  (c) a non-ASCII character the pre-tokenizer glues to the first word (Qwen glues any one
  non-letter, e.g. "“carcinoma"; add it to `prefixes` to cover it).
  Nested and overlapping mentions all count ("lobular carcinoma" also mentions "carcinoma").
  (The reference lower-cases and matches substrings anywhere, so "carcinoma" inside
  "adenocarcinoma" counted there; word boundaries stop that.) Lookup is a hash of every
  id window of length ≤ Lmax, a binary search among the U pattern hashes and an exact
  check of the ids: O(B·T·Lmax·log U), so U may be large (U ≈ surfaces × 3 case variants
  × (1 + merged prefixes): ×2 for GPT-2-style, up to ×36 for Qwen-style pre-tokenizers).
* Entity reward: Dice with the soft KG term, capped at 1, 0 when P and G are both empty;
  the soft term reads each row's sparse KG neighbourhood of G (`entity_dice`), never an
  (E, E) matrix, so a PrimeKG-sized lexicon fits.
* `rouge`: ROUGE-L F1 = 2·LCS/(n_answer + n_reference) over token ids of the answer
  span and the reference, whitespace tokens excluded on both sides; 0 when LCS = 0 or
  there is no answer span.
* total = format_weight·format + semantic_weight·semantic + alpha·entity (weights 1, 1, 0.5
  in the paper; the ablation sets some to 0).
"""
from __future__ import annotations

import string
from functools import partial
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pathreasoner_jax.tokenizer import SpecialIds

DEFAULT_PREFIXES = (" ", "\t") + tuple(string.punctuation)


@struct.dataclass
class TokenTables:
    """Per-vocab-id tables and the special ids the rewards need (a pytree; ints static)."""
    ws_v: jax.Array           # (V,) bool: decodes to whitespace only
    first_alnum_v: jax.Array  # (V,) bool: first decoded character is alphanumeric
    last_alnum_v: jax.Array   # (V,) bool: last decoded character is alphanumeric
    tags: tuple = struct.field(pytree_node=False)  # (<observe>, </observe>, <think>, </think>, <answer>, </answer>)
    eos: int = struct.field(pytree_node=False)
    pad: int = struct.field(pytree_node=False)


@struct.dataclass
class EntityTokenPatterns:
    """Surface forms compiled to unique token-id patterns, with a hash index for lookup.

    U patterns of at most `max_len` ids, stored in the order of their hash keys (unique by
    construction), so a binary search over `keys_u` gives the pattern index directly.
    """
    pat_ul: jax.Array          # (U, Lmax) int32, -1 padded
    meta_u: jax.Array          # (U,) int32: length | first char alnum << 8 | last char alnum << 9
    ent_uk: jax.Array          # (U, K) int32 entity indices, -1 padded (a pattern may name several)
    keys_u: jax.Array          # (U,) uint32, ascending
    num_entities: int = struct.field(pytree_node=False)
    max_len: int = struct.field(pytree_node=False)
    seed: int = struct.field(pytree_node=False)


def build_token_tables(tok, sid: SpecialIds, vocab_size: Optional[int] = None) -> TokenTables:
    """Decodes every id once. `vocab_size` (the model's, may exceed len(tok)) sizes the tables."""
    n = len(tok)
    v = max(n, vocab_size or 0)
    ws, fa, la = np.zeros(v, bool), np.zeros(v, bool), np.zeros(v, bool)
    special = set(tok.all_special_ids) | set(sid.tags) | {sid.eos, sid.pad}
    texts = tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                             clean_up_tokenization_spaces=False)  # one batched call, not one per id
    for i, s in enumerate(texts):
        if not s:
            continue
        ws[i] = s.isspace() and i not in special
        fa[i], la[i] = s[0].isalnum(), s[-1].isalnum()
    return TokenTables(ws_v=jnp.asarray(ws), first_alnum_v=jnp.asarray(fa), last_alnum_v=jnp.asarray(la),
                       tags=tuple(int(t) for t in sid.tags), eos=int(sid.eos), pad=int(sid.pad))


def case_variants(surface: str) -> list[str]:
    """As written, lower-case, first letter upper-case (sentence start); deduplicated."""
    out = []
    for v in (surface, surface.lower(), surface[:1].upper() + surface[1:]):
        if v and v not in out:
            out.append(v)
    return out


# ---------------------------------------------------------------- hashing of id windows
_MUL = jnp.uint32(0x01000193)


def _fmix32(x):
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _windows(ids_bt: jax.Array, n: int, fill: int = -1) -> jax.Array:
    """(B, T, n): entry [b, t, j] = ids[b, t + j], `fill` past the end."""
    b, t = ids_bt.shape
    ext = jnp.concatenate([ids_bt, jnp.full((b, n), fill, ids_bt.dtype)], axis=1)
    return ext[:, jnp.arange(t)[:, None] + jnp.arange(n)]  # one gather, whatever n


def _window_keys(ids_bt: jax.Array, max_len: int, seed: int) -> jax.Array:
    """(B, T, Lmax) uint32: [b, t, l-1] hashes ids[b, t:t+l] (l included in the hash)."""
    win = _windows(ids_bt.astype(jnp.int32), max_len).astype(jnp.uint32)  # -1 wraps; never in a pattern

    def step(h, xs):  # a scan, not an unrolled loop: compile time independent of Lmax
        tok, salt = xs
        h = h * _MUL + tok + jnp.uint32(1)
        return h, _fmix32(h ^ salt)

    salts = jnp.asarray([((j + 1) * 0x9E3779B9) & 0xFFFFFFFF for j in range(max_len)], jnp.uint32)
    _, keys = jax.lax.scan(step, jnp.full(ids_bt.shape, seed, jnp.uint32), (jnp.moveaxis(win, -1, 0), salts))
    return jnp.moveaxis(keys, 0, -1)


def compile_lexicon(tok, surfaces: Sequence[tuple[str, int]], num_entities: int,
                    prefixes: Sequence[str] = DEFAULT_PREFIXES) -> EntityTokenPatterns:
    """(surface, entity index) pairs → token patterns (see the module docstring for the rule)."""
    enc = lambda s: tuple(tok.encode(s, add_special_tokens=False))  # noqa: E731
    pat_ents: dict[tuple, set] = {}
    pat_edges: dict[tuple, tuple[bool, bool]] = {}
    prefix_ids = {c: enc(c) for c in prefixes}
    for surface, e in surfaces:
        if not 0 <= e < num_entities:
            raise ValueError(f"surface {surface!r}: entity index {e} outside [0, {num_entities})")
        for v in case_variants(surface):
            base = enc(v)
            cands = [(base, v)] + [(enc(c + v), c + v) for c in prefixes
                                   if enc(c + v) != prefix_ids[c] + base]
            for ids, text in cands:
                pat_ents.setdefault(ids, set()).add(e)
                pat_edges[ids] = (text[0].isalnum(), text[-1].isalnum())
    if not pat_ents:  # a dummy that never matches keeps shapes non-empty
        pat_ents[(-2,)] = set()
        pat_edges[(-2,)] = (False, False)
    pats = sorted(pat_ents)
    u, lmax = len(pats), max(len(p) for p in pats)
    if lmax > 255:
        raise ValueError("a surface form longer than 255 tokens")
    k = max(1, max(len(s) for s in pat_ents.values()))
    pat_ul = np.full((u, lmax), -1, np.int32)
    ent_uk = np.full((u, k), -1, np.int32)
    for i, p in enumerate(pats):
        pat_ul[i, :len(p)] = p
        ent_uk[i, :len(pat_ents[p])] = sorted(pat_ents[p])
    len_u = np.array([len(p) for p in pats], np.int32)
    for seed in range(64):  # the keys must be unique so one lookup + one verify is exact
        keys = np.asarray(_window_keys(jnp.asarray(pat_ul), lmax, seed))[np.arange(u), 0, len_u - 1]
        if np.unique(keys).size == u:
            break
    else:
        raise RuntimeError("could not find a collision-free pattern hash")
    order = np.argsort(keys, kind="stable")
    edges = np.array([pat_edges[p] for p in pats], np.int32).reshape(u, 2)
    meta = len_u | (edges[:, 0] << 8) | (edges[:, 1] << 9)  # one gather per query instead of three
    return EntityTokenPatterns(
        pat_ul=jnp.asarray(pat_ul[order]), meta_u=jnp.asarray(meta[order]), ent_uk=jnp.asarray(ent_uk[order]),
        keys_u=jnp.asarray(keys[order]), num_entities=int(num_entities), max_len=int(lmax), seed=int(seed))


# ---------------------------------------------------------------- rewards
def _lookup(table_v: jax.Array, ids: jax.Array) -> jax.Array:
    """table[ids] with ids outside [0, V) → False."""
    ok = (ids >= 0) & (ids < table_v.shape[0])
    return ok & table_v[jnp.clip(ids, 0, table_v.shape[0] - 1)]


def tag_span(ids_bt: jax.Array, valid_bt: jax.Array, open_id: int, close_id: int) -> jax.Array:
    """(B, T) bool: strictly between the first open tag and the first close tag after it."""
    t = jnp.arange(ids_bt.shape[1])
    is_open = valid_bt & (ids_bt == open_id)
    o = jnp.argmax(is_open, axis=1)[:, None]
    is_close = valid_bt & (ids_bt == close_id) & (t > o)
    c = jnp.argmax(is_close, axis=1)[:, None]
    found = (is_open.any(1) & is_close.any(1))[:, None]
    return found & valid_bt & (t > o) & (t < c)


def format_reward(ids_bt: jax.Array, mask_bt: jax.Array, tables: TokenTables) -> jax.Array:
    """(B,) float32 in {0, 1}; see the module docstring for the grammar."""
    valid = mask_bt.astype(bool)
    t = jnp.arange(ids_bt.shape[1])
    ws = _lookup(tables.ws_v, ids_bt)
    ok = jnp.ones(ids_bt.shape[0], bool)
    pos = []
    for tag in tables.tags:
        is_tag = valid & (ids_bt == tag)
        ok &= is_tag.sum(1) == 1
        pos.append(jnp.argmax(is_tag, axis=1)[:, None])
    for a, b in zip(pos[:-1], pos[1:]):
        ok &= (a < b)[:, 0]
    o0, o1, t0, t1, a0, a1 = pos
    gap = (t < o0) | ((t > o1) & (t < t0)) | ((t > t1) & (t < a0))
    tail_ok = ws | (ids_bt == tables.eos) | (ids_bt == tables.pad)
    ok &= ~(valid & gap & ~ws).any(1)
    ok &= ~(valid & (t > a1) & ~tail_ok).any(1)
    return ok.astype(jnp.float32)


def entities_found(ids_bt: jax.Array, mask_bt: jax.Array, tables: TokenTables,
                   lex: EntityTokenPatterns) -> jax.Array:
    """(B, E) bool: entities mentioned in the observe or think span (rule in the docstring)."""
    b, t = ids_bt.shape
    lmax, e = lex.max_len, lex.num_entities
    ids = ids_bt.astype(jnp.int32)
    valid = mask_bt.astype(bool)
    keys = _window_keys(ids, lmax, lex.seed)                                   # (B,T,L)
    u = jnp.searchsorted(lex.keys_u, keys, method="scan_unrolled")            # (B,T,L)
    u = jnp.minimum(u, lex.keys_u.shape[0] - 1)
    meta = lex.meta_u[u]
    ls = jnp.arange(1, lmax + 1)
    hit = (lex.keys_u[u] == keys) & ((meta & 0xFF) == ls)
    # verify the ids, so hash collisions with non-patterns can never match
    win = _windows(ids, lmax)

    def verify(j, hit):  # one offset at a time: (B,T,L) live, not (B,T,L,L)
        w = jax.lax.dynamic_index_in_dim(win, j, axis=2, keepdims=True)
        return hit & ((w == lex.pat_ul[u, j]) | (j >= ls))

    hit = jax.lax.fori_loop(0, lmax, verify, hit)
    # word boundaries from the neighbouring tokens
    prev_last = jnp.pad(_lookup(tables.last_alnum_v, ids), ((0, 0), (1, 0)))[:, :t]
    next_first = _windows(_lookup(tables.first_alnum_v, ids), lmax + 1, fill=False)[:, :, 1:]  # [b,t,l-1] at t+l
    hit &= ~(((meta >> 8) & 1).astype(bool) & prev_last[:, :, None])
    hit &= ~(((meta >> 9) & 1).astype(bool) & next_first)
    # the whole window inside one span: a prefix count over the span mask
    sid = tables.tags
    inside = jnp.zeros_like(hit)
    for o_id, c_id in ((sid[0], sid[1]), (sid[2], sid[3])):
        span = tag_span(ids, valid, o_id, c_id).astype(jnp.int32)
        c = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), jnp.cumsum(span, axis=1)], axis=1)
        c = jnp.pad(c, ((0, 0), (0, lmax)), mode="edge")                       # (B, T+1+L)
        ends = c[:, jnp.arange(t)[:, None] + ls]                               # C[t+l]
        inside |= (ends - c[:, :t, None]) == ls
    hit &= inside
    ent = lex.ent_uk[u]                                                        # (B,T,L,K)
    idx = jnp.where(hit[..., None] & (ent >= 0), ent, e).reshape(b, -1)
    found = jnp.zeros((b, e + 1), bool).at[jnp.arange(b)[:, None], idx].set(True)
    return found[:, :e]


def entity_dice(found_be: jax.Array, gt_bk: jax.Array, near_bm: jax.Array, near_sim_bm: jax.Array,
                beta: float = 0.5) -> jax.Array:
    """(B,) Dice = 2(|P∩G| + β Σ_{e∈P∖G} max_{g∈G} sim(e,g)) / (|P|+|G|), capped at 1, 0 if both empty.

    found_be (B,E) bool: P over the lexicon; gt_bk (B,K) int32: G as distinct entity ids,
    −1 padded; near_bm (B,M) int32 / near_sim_bm (B,M) float32: the entities outside G with
    a positive similarity to some g ∈ G, each once, with max_g sim(e, g) (−1 padded;
    `data.store.Entities.near`). Entities with no similarity to G add nothing to the soft
    term, so these lists make the sum exact without any (E, E) matrix: the work is
    O(B·(E + K + M)) and only the per-row lists go to the device.
    """
    p = found_be.astype(bool)
    e = p.shape[1]
    take = lambda ids: jnp.take_along_axis(p, jnp.clip(ids, 0, e - 1), axis=1) & (ids >= 0)  # noqa: E731
    inter = take(gt_bk).sum(1).astype(jnp.float32)
    soft = jnp.sum(jnp.where(take(near_bm), jnp.maximum(near_sim_bm.astype(jnp.float32), 0.0), 0.0), axis=1)
    denom = (p.sum(1) + (gt_bk >= 0).sum(1)).astype(jnp.float32)
    dice = jnp.minimum(1.0, 2.0 * (inter + beta * soft) / jnp.maximum(denom, 1.0))
    return jnp.where(denom > 0, dice, 0.0)


def rouge_l(ids_bt: jax.Array, mask_bt: jax.Array, ref_br: jax.Array, ref_mask_br: jax.Array,
            tables: TokenTables) -> jax.Array:
    """(B,) ROUGE-L F1 between the answer span and the reference (whitespace ids excluded).

    The answer tokens are first packed to the left (a scatter), then the LCS runs one DP
    row (B, R+1) per answer token, for as many steps as the longest answer in the batch
    (a while loop, not T steps). A row update is
    new[j] = max(old[j], cummax_k≤j(match_k ? old[k-1]+1 : 0)), equal to the textbook
    recurrence because a DP row is non-decreasing in j.
    """
    b, t = ids_bt.shape
    ans = tag_span(ids_bt, mask_bt.astype(bool), tables.tags[4], tables.tags[5])
    ans &= ~_lookup(tables.ws_v, ids_bt)
    refv = ref_mask_br.astype(bool) & ~_lookup(tables.ws_v, ref_br)
    n_ans = ans.sum(1)
    slot = jnp.where(ans, jnp.cumsum(ans, axis=1) - 1, t)  # t: dropped
    packed = jnp.full((b, t), -1, jnp.int32).at[jnp.arange(b)[:, None], slot].set(
        ids_bt.astype(jnp.int32), mode="drop")

    def step(i, row):
        tok_b = jax.lax.dynamic_index_in_dim(packed, i, axis=1, keepdims=False)
        cand = jnp.where((ref_br == tok_b[:, None]) & refv, row[:, :-1] + 1, 0)
        new = jnp.maximum(row[:, 1:], jax.lax.cummax(cand, axis=1))
        new = jnp.concatenate([jnp.zeros((b, 1), row.dtype), new], axis=1)
        return jnp.where((i < n_ans)[:, None], new, row)

    row0 = jnp.zeros((b, ref_br.shape[1] + 1), jnp.int32)
    row = jax.lax.fori_loop(0, n_ans.max(), step, row0)
    lcs = row[:, -1].astype(jnp.float32)
    n = (n_ans + refv.sum(1)).astype(jnp.float32)
    return jnp.where(lcs > 0, 2.0 * lcs / jnp.maximum(n, 1.0), 0.0)


# Semantic scorers computed on device; `judge` and `self` are computed by their callers
# (judge.py, the trainer's reference model) and passed in as `semantic_b`.
SEMANTIC: dict[str, Callable] = {"rouge": rouge_l}


@partial(jax.jit, static_argnames=("semantic",))
def _compute_rewards(ids_bt, mask_bt, ctx, tables, lex, ref_br, ref_mask_br, semantic_b, alpha, beta, semantic,
                     format_weight, semantic_weight):
    fmt = format_reward(ids_bt, mask_bt, tables)
    ent = entity_dice(entities_found(ids_bt, mask_bt, tables, lex), ctx["gt_ids"], ctx["near_ids"],
                      ctx["near_sim"], beta)
    if semantic in SEMANTIC:
        sem = SEMANTIC[semantic](ids_bt, mask_bt, ref_br, ref_mask_br, tables)
    else:
        sem = jnp.asarray(semantic_b, jnp.float32)
    total = format_weight * fmt + semantic_weight * sem + alpha * ent
    return {"format": fmt, "entity": ent, "semantic": sem, "total": total}


def compute_rewards(ids_bt, mask_bt, ctx: dict, tables: TokenTables, lex: EntityTokenPatterns,
                    ref_br=None, ref_mask_br=None, semantic_b=None, *, alpha=0.5, beta=0.5,
                    semantic: str = "rouge", format_weight=1.0, semantic_weight=1.0) -> dict:
    """All rewards for a batch of completions → dict of (B,) float32: `format`, `entity`,
    `semantic`, `total` (= format_weight·format + semantic_weight·semantic + alpha·entity).

    ids_bt (B,T) int completion ids; mask_bt (B,T) completion mask (incl. the first EOS);
    ctx: each row's entity context {"gt_ids" (B,K), "near_ids" (B,M), "near_sim" (B,M)}
    (see `entity_dice`; `data.store.Entities.context` builds it);
    ref_br/ref_mask_br (B,R) reference answer ids + mask (semantic="rouge");
    semantic_b (B,) precomputed scores for semantic="judge"|"self" (SEMANTIC lists the
    on-device ones). The work is one jitted call.
    """
    if semantic not in SEMANTIC and semantic_b is None:
        raise ValueError(f"semantic={semantic!r} is not computed on device: pass semantic_b")
    ctx = {k: ctx[k] for k in ("gt_ids", "near_ids", "near_sim")}
    return _compute_rewards(ids_bt, mask_bt, ctx, tables, lex, ref_br, ref_mask_br, semantic_b, alpha, beta,
                            semantic, format_weight, semantic_weight)
