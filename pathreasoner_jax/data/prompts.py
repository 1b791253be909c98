"""Fixed-shape prompt batches (GRPO rollouts, evaluation) with each prompt's reward context.

Every batch of a run has the same shape — prompt length bucket × `sample_num` patch
slots, prompts left-padded so the last prompt token sits at the end, references padded
to the longest reference — so generation and the GRPO update compile once. Both lengths
are read off every sample at start-up (distinct questions only; the answers in one
batched tokenizer call), so no prompt is cut (it would lose image slots) and no
reference is cut (a cut reference caps ROUGE-L below 1).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.data.encode import ExampleEncoder, bucket
from pathreasoner_jax.data.slide_chunks import slide_patches

REF_MULTIPLE = 16  # reference length rounded up to a multiple of this


class PromptBuilder:
    """Samples → fixed-shape prompt batches with the reward context of each prompt."""

    def __init__(self, rt, samples, slides, entities, extra_rows=()):
        """rt: a `runtime.Runtime`; samples: random-access SampleRecords; entities: `store.Entities`;
        extra_rows: other SampleRecords that will be batched with `batch_rows` (eval suites).
        A batch holds each prompt's entity context for the reward ("gt_ids" (B, max_gt),
        "near_ids"/"near_sim" (B, max_near); `store.Entities.context`)."""
        self.rt, self.samples, self.slides = rt, samples, slides
        self.enc = ExampleEncoder(rt.tokenizer, rt.ids.image, rt.cfg.data.sample_num)
        self.entities = entities
        self.index = entities.index  # lower-case name or synonym → entity
        rows = [samples[i] for i in range(len(samples))] + list(extra_rows)
        # the entity context's widths, from every sample so that batches keep one shape
        gts = [self.gt_ids(s) for s in rows]
        self.max_gt = _round_up(max([len(g) for g in gts] + [1]), 8)
        near = max([len(entities.near(g)) for g in {tuple(g) for g in gts}] + [1])  # trajectories share G
        self.max_near = _round_up(min(near, rt.cfg.rewards.max_near), 16)
        questions = {s.question for s in rows}
        longest_q = max(len(self.enc.prompt_ids(q, 0)) for q in questions)
        self.prompt_len = bucket(rt.cfg.data.sample_num + longest_q, rt.cfg.data.length_buckets)
        if self.prompt_len < rt.cfg.data.sample_num + longest_q:
            raise UserError(f"a prompt of {longest_q} text tokens + {rt.cfg.data.sample_num} slide tokens exceeds the "
                            f"largest data.length_buckets entry {self.prompt_len}; add a larger bucket")
        answers = rt.tokenizer([s.answer for s in rows], add_special_tokens=False)["input_ids"] if rows else []
        longest_a = max([len(a) for a in answers] + [1])
        self.ref_len = -(-longest_a // REF_MULTIPLE) * REF_MULTIPLE
        self.order = np.random.default_rng(rt.cfg.run.seed).permutation(len(samples))
        self.extra: list = []  # rows given directly (eval), addressed by negative keys

    def gt_ids(self, sample) -> list[int]:
        """The sample's ground-truth entities that are in the lexicon, as distinct indices."""
        return sorted({self.index[e.lower()] for e in sample.entities if e.lower() in self.index})

    def sample_at(self, i: int):
        return self.samples[int(self.order[i % len(self.order)])]

    def row_text(self, key: int) -> tuple[str, str]:
        """(question, reference answer) of a batch row's `row_key`."""
        s = self.sample_at(key) if key >= 0 else self.extra[-1 - key]
        return s.question, s.answer

    def batch(self, positions: list[int]) -> dict:
        """Prompt batch for the given positions of the shuffled order."""
        return self.batch_rows([self.sample_at(i) for i in positions], positions=positions)

    def batch_rows(self, rows: list, slide_ids: list | None = None, positions: list | None = None) -> dict:
        """Prompt batch for these samples; `slide_ids` overrides whose features each row gets."""
        cfg, ids = self.rt.cfg, self.rt.ids
        slide_ids = slide_ids or [s.slide_id for s in rows]
        if positions is None:
            self.extra.extend(rows)
            positions = [-len(self.extra) + i for i in range(len(rows))]
        n, tp, p = len(rows), self.prompt_len, cfg.data.sample_num
        f = self.slides[rows[0].slide_id].features.shape[1]
        out = {"ids": np.full((n, tp), ids.pad, np.int32), "text_valid": np.zeros((n, tp), bool),
               "features": np.zeros((n, p, f), np.float32), "patch_valid": np.zeros((n, p), bool),
               "ref_ids": np.full((n, self.ref_len), ids.pad, np.int32),
               "ref_mask": np.zeros((n, self.ref_len), bool),
               "row_key": np.asarray(positions, np.int64)}
        for r, (s, sid) in enumerate(zip(rows, slide_ids)):
            slide = self.slides[sid]
            idx = slide_patches(slide, np.arange(slide.num_patches), p)
            prompt = self.enc.prompt_ids(s.question, len(idx))
            if len(prompt) > tp:  # a question not seen at start-up: cutting would drop image slots
                raise UserError(f"question of sample {s.sample_id!r} makes a {len(prompt)}-token prompt, longer than "
                                f"this run's prompt length {tp}")
            out["ids"][r, tp - len(prompt):] = prompt  # left padding: the last prompt token at tp-1
            out["text_valid"][r, tp - len(prompt):] = True
            out["features"][r, :len(idx)] = slide.features[idx]
            out["patch_valid"][r, :len(idx)] = True
            ref = self.rt.tokenizer(s.answer, add_special_tokens=False)["input_ids"]
            if len(ref) > self.ref_len:
                raise UserError(f"reference answer of sample {s.sample_id!r} has {len(ref)} tokens, more than this "
                                f"run's reference length {self.ref_len}")
            out["ref_ids"][r, :len(ref)], out["ref_mask"][r, :len(ref)] = ref, True
        out.update(self.entities.context([self.gt_ids(s) for s in rows], self.max_gt, self.max_near))
        return {k: jnp.asarray(v) for k, v in out.items()}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
