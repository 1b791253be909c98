"""Sample + slide → token ids, loss weights and kept patches (one training example).

Chat layout (Qwen): `<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`
is the prompt; the trajectory and its closing `<|im_end|>` are the target, the only
tokens with loss. The single `<image>` in the question becomes one image token per
kept patch (the VLM splices the projected patches there).

Trajectory masking (SPEC §5): each finding/reasoning step is picked with probability p;
`loss` mode gives its tokens weight 0 (they stay in the input), `drop` mode removes the
step from the text. The answer is never masked. Pseudo-bag masking drops the patches of
one cluster sampled from the prior, with probability q.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from pathreasoner_jax.data.slide_chunks import slide_patches
from pathreasoner_jax.records import SampleRecord, SlideRecord, raw, trajectory_spans
from pathreasoner_jax.tokenizer import IMAGE_TOKEN


def prompt_text(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Example:
    ids: np.ndarray  # (T,) int32, image placeholder expanded
    weight: np.ndarray  # (T,) float32, weight of predicting ids[t] (0 for the first token)
    patch_idx: np.ndarray  # (n,) rows of the slide's features that are kept
    prompt_len: int  # tokens before the trajectory (image tokens expanded)


class ExampleEncoder:
    def __init__(self, tokenizer, image_id: int, sample_num: int, mask_mode: str = "none",
                 mask_rate: float = 0.0, pseudo_bag_q: float = 0.0, priors: Optional[dict] = None):
        if mask_mode not in ("none", "loss", "drop"):
            raise ValueError(f"sft.trajectory_mask_mode: {mask_mode!r} is not none | loss | drop")
        self.tok, self.image_id, self.sample_num = tokenizer, image_id, sample_num
        self.mask_mode, self.mask_rate = mask_mode, mask_rate
        self.pseudo_bag_q, self.priors = pseudo_bag_q, priors or {}

    def _tokens(self, text: str, offsets: bool = False):
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=offsets)
        return enc

    def choose_steps(self, sample: SampleRecord, rng: np.random.Generator) -> set[tuple[str, int]]:
        if self.mask_mode == "none" or self.mask_rate <= 0:
            return set()
        steps = [("finding", i) for i in range(len(sample.findings))] + \
                [("reasoning", i) for i in range(len(sample.reasoning))]
        picks = rng.random(len(steps)) < self.mask_rate
        return {s for s, p in zip(steps, picks) if p}

    def target(self, sample: SampleRecord, rng: np.random.Generator) -> tuple[list[int], list[float]]:
        """Trajectory tokens + `<|im_end|>` and their loss weights after trajectory masking."""
        masked = self.choose_steps(sample, rng)
        findings, reasoning = sample.findings, sample.reasoning
        if self.mask_mode == "drop" and masked:
            findings = [f for i, f in enumerate(findings) if ("finding", i) not in masked]
            reasoning = [r for i, r in enumerate(reasoning) if ("reasoning", i) not in masked]
            masked = set()
        text, spans = trajectory_spans(findings, reasoning, sample.answer)
        enc = self._tokens(text + "<|im_end|>", offsets=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        zero = [(s, e) for kind, i, s, e in spans if (kind, i) in masked]
        weights = [0.0 if any(a < e and b > s for s, e in zero) else 1.0 for a, b in offs]
        return list(ids), weights

    def patches(self, slide: SlideRecord, rng: np.random.Generator) -> np.ndarray:
        keep = np.arange(slide.num_patches)
        prior = self.priors.get(slide.slide_id)
        if prior is not None and self.pseudo_bag_q > 0 and rng.random() < self.pseudo_bag_q:
            cluster = rng.choice(len(prior), p=prior)
            kept = keep[slide.cluster_ids != cluster]
            keep = kept if len(kept) else keep
        return slide_patches(slide, keep, self.sample_num)

    def prompt_ids(self, question: str, n_patches: int) -> list[int]:
        ids = self._tokens(prompt_text(question))["input_ids"]
        out: list[int] = []
        for t in ids:
            out.extend([self.image_id] * n_patches if t == self.image_id else [t])
        return out

    def encode(self, sample: SampleRecord, slide: SlideRecord, rng: np.random.Generator) -> Example:
        if IMAGE_TOKEN not in sample.question:
            raise ValueError(f"sample {sample.sample_id}: question has no {IMAGE_TOKEN}")
        patch_idx = self.patches(slide, rng)
        prompt = self.prompt_ids(sample.question, len(patch_idx))
        tgt, w = self.target(sample, rng)
        ids = np.asarray(prompt + tgt, np.int32)
        weight = np.asarray([0.0] * len(prompt) + w, np.float32)
        return Example(ids, weight, patch_idx, len(prompt))


def loss_positions(loss_weight, minimum: int = 16):
    """numpy (B,T) weights → ("loss_pos" (B,L) int32, "loss_pos_valid" (B,L) float32): each
    row's positions with weight > 0, padded; L a power of two ≥ the longest row (≥ minimum,
    ≤ T), so few shapes compile. Past the loss positions every row points at position 0
    with validity 0. The loss is the same; the fp32 logits shrink from T to L positions a row."""
    counts = (loss_weight > 0).sum(1)
    t = loss_weight.shape[1]
    n = max(int(counts.max(initial=0)), 1)
    size = minimum
    while size < n:
        size *= 2
    size = min(size, t)
    pos = np.zeros((len(loss_weight), size), np.int32)
    ok = np.zeros((len(loss_weight), size), np.float32)
    for i, row in enumerate(loss_weight):
        idx = np.flatnonzero(row > 0)
        pos[i, :len(idx)], ok[i, :len(idx)] = idx, 1.0
    return {"loss_pos": pos, "loss_pos_valid": ok}


def bucket(n: int, buckets: list[int]) -> int:
    """Smallest bucket ≥ n (the largest bucket when none is)."""
    fits = [b for b in sorted(buckets) if b >= n]
    return fits[0] if fits else max(buckets)


def patch_bucket(n: int, cap: int) -> int:
    """Powers of two from 64 up to the cap, so XLA sees few patch shapes."""
    b = 64
    while b < n:
        b *= 2
    return min(b, max(cap, n))


def collate(examples: list[Example], slides: list[SlideRecord], length_buckets: list[int],
            sample_num: int, pad_id: int) -> tuple[dict, int]:
    """Pads a list of examples to a (length bucket, patch bucket) batch.

    Returns (batch dict as `sft_loss` expects, number of rows truncated to the largest bucket).
    """
    t = bucket(max(len(e.ids) for e in examples), length_buckets)
    p = patch_bucket(max(len(e.patch_idx) for e in examples), sample_num)
    f = slides[0].features.shape[1]
    b = len(examples)
    ids = np.full((b, t), pad_id, np.int32)
    valid = np.zeros((b, t), bool)
    weight = np.zeros((b, t), np.float32)
    # features stay in their stored dtype (bf16 halves the bytes a host moves per batch);
    # the model casts them to its compute dtype, which is exact from bf16 / fp16 to fp32
    feats = np.zeros((b, p, f), np.result_type(*(s.features.dtype for s in slides)))
    pvalid = np.zeros((b, p), bool)
    truncated = 0
    for i, (e, s) in enumerate(zip(examples, slides)):
        n = min(len(e.ids), t)
        truncated += n < len(e.ids)
        ids[i, :n], valid[i, :n], weight[i, :n] = e.ids[:n], True, e.weight[:n]
        k = len(e.patch_idx)
        rows = np.asarray(s.features[e.patch_idx])
        if rows.dtype == feats.dtype:
            raw(feats)[i, :k] = raw(rows)
        else:
            feats[i, :k] = rows
        pvalid[i, :k] = True
    targets = np.concatenate([ids[:, 1:], np.full((b, 1), pad_id, np.int32)], 1)
    loss_weight = np.concatenate([weight[:, 1:], np.zeros((b, 1), np.float32)], 1)
    batch = {"ids": ids, "text_valid": valid, "targets": targets, "loss_weight": loss_weight,
             "features": feats, "patch_valid": pvalid, **loss_positions(loss_weight)}
    return batch, truncated
