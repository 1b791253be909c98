"""VL records → token ids, loss weights and images; fixed-shape batches for the three stages.

Chat layout (Qwen2.5-VL's template): `<|im_start|>system\\n…<|im_end|>\\n`, then user turns
with each image as `<|vision_start|>` + one `<|image_pad|>` per merged token +
`<|vision_end|>`, then `<|im_start|>assistant\\n`. Only assistant content and its closing
`<|im_end|>` carry loss. A caption record is the turn pair "describe this image" → caption;
an MCQ record is a prompt (question + lettered options) whose reference is its letter.

CoT masking, the slide SFT's options on image conversations: each sentence of the
`<observe>` and `<think>` spans is picked with probability p; `loss` gives its tokens weight
0, `drop` removes it from the text. The `<answer>` is never masked.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.data.encode import loss_positions
from pathreasoner_jax.vl.preprocess import VisionGeometry, num_image_tokens, pack_images, preprocess_image
from pathreasoner_jax.vl.mcq import mcq_prompt
from pathreasoner_jax.vl.records import IMAGE_PLACEHOLDER, VLRecord

SYSTEM = "You are a helpful assistant."
CAPTION_PROMPT = "Describe this pathology image."
VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
_SENTENCE = re.compile(r"[^.!?]+[.!?]*\s*")
_SPAN = re.compile(r"(<observe>|<think>)(.*?)(</observe>|</think>)", re.DOTALL)


def user_turns(rec: VLRecord) -> list[dict]:
    """The record's messages; caption/MCQ images go before the text as placeholders."""
    lead = IMAGE_PLACEHOLDER * len(rec.images)
    if rec.kind == "caption":
        return [{"role": "user", "content": lead + CAPTION_PROMPT}, {"role": "assistant", "content": rec.caption}]
    if rec.kind == "mcq":
        return [{"role": "user", "content": lead + mcq_prompt(rec.question, rec.options)}]
    return list(rec.conversation)


@dataclass
class VLExample:
    ids: np.ndarray  # (T,) int32, image placeholders expanded
    weight: np.ndarray  # (T,) float32: weight of predicting ids[t] from ids[:t]
    images: list  # [(pixel_values (P_i, patch_dim), grid_thw (3,))]


class VLEncoder:
    def __init__(self, tokenizer, geom: VisionGeometry = VisionGeometry(), mask_mode: str = "none",
                 mask_rate: float = 0.0):
        self.tok, self.geom, self.mask_mode, self.mask_rate = tokenizer, geom, mask_mode, mask_rate
        conv = tokenizer.convert_tokens_to_ids
        self.image_id, self.start_id, self.end_id = conv("<|image_pad|>"), conv("<|vision_start|>"), conv("<|vision_end|>")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in (self.image_id, self.start_id, self.end_id):
            raise UserError(f"tokenizer lacks one of {VL_TOKENS}")

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def images(self, rec: VLRecord) -> list:
        out = []
        for i, png in enumerate(rec.images):
            try:
                img = Image.open(io.BytesIO(png))
                img.load()
            except Exception as e:  # noqa: BLE001 — any decoder error is a bad record
                raise UserError(f"{rec.source or 'record'}: image {i} is not a readable PNG ({e})") from None
            out.append(preprocess_image(img, self.geom))
        return out

    def _content_ids(self, content: str, grids: list, k: int) -> tuple[list[int], int]:
        """A user turn's content: each `<image>` → vision_start, q × image_pad, vision_end."""
        parts, out = content.split(IMAGE_PLACEHOLDER), []
        for j, part in enumerate(parts):
            if j:
                if k >= len(grids):
                    raise UserError("more <image> placeholders than images")
                out += [self.start_id] + [self.image_id] * num_image_tokens(grids[k], self.geom.merge_size) \
                    + [self.end_id]
                k += 1
            if part:
                out += self._ids(part)
        return out, k

    def mask_reply(self, text: str, rng) -> tuple[str, list[tuple[int, int]]]:
        """(reply after `drop`, character spans whose tokens get weight 0 under `loss`)."""
        if self.mask_mode == "none" or self.mask_rate <= 0 or rng is None:
            return text, []
        out, zero, pos = [], [], 0
        for m in _SPAN.finditer(text):
            out.append(text[pos:m.start(2)])
            for s in _SENTENCE.findall(m.group(2)):
                picked = rng.random() < self.mask_rate
                if picked and self.mask_mode == "loss":
                    start = sum(map(len, out))
                    zero.append((start, start + len(s)))
                if not (picked and self.mask_mode == "drop"):
                    out.append(s)
            pos = m.end(2)
        out.append(text[pos:])
        return "".join(out), zero

    def _reply_ids(self, text: str, rng) -> tuple[list[int], list[float]]:
        text, zero = self.mask_reply(text, rng)
        enc = self.tok(text + "<|im_end|>", add_special_tokens=False, return_offsets_mapping=bool(zero))
        ids = list(enc["input_ids"])
        if not zero:
            return ids, [1.0] * len(ids)
        return ids, [0.0 if any(a < e and b > s for s, e in zero) else 1.0 for a, b in enc["offset_mapping"]]

    def encode(self, rec: VLRecord, rng=None, prompt_only: bool = False) -> VLExample:
        """Training example (all turns; weight on assistant replies) or, with `prompt_only`,
        the prompt up to `<|im_start|>assistant\\n` (the last assistant turn left out)."""
        images = self.images(rec)
        grids = [g for _, g in images]
        turns = user_turns(rec)
        if prompt_only and turns and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        ids, w, k = self._ids(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"), [], 0
        w = [0.0] * len(ids)
        for t in turns:
            head = self._ids(f"<|im_start|>{t['role']}\n")
            if t["role"] == "assistant":
                body, bw = self._reply_ids(t["content"], rng)
                ids, w = ids + head + body + self._ids("\n"), w + [0.0] * len(head) + bw + [0.0]
            else:
                body, k = self._content_ids(t["content"], grids, k)
                tail = self._ids("<|im_end|>\n")
                ids, w = ids + head + body + tail, w + [0.0] * (len(head) + len(body) + len(tail))
        if k != len(grids):
            raise UserError(f"{rec.source or 'record'}: {len(grids)} images but {k} <image> placeholders")
        if prompt_only:
            gen = self._ids("<|im_start|>assistant\n")
            ids, w = ids + gen, w + [0.0] * len(gen)
        return VLExample(np.asarray(ids, np.int32), np.asarray(w, np.float32), images)


def collate(examples: list[VLExample], max_len: int, max_patches: int, pad_id: int,
            geom: VisionGeometry = VisionGeometry(), left_pad: bool = False) -> tuple[dict, int]:
    """Examples → one fixed-shape batch: ids / text_valid / targets / loss_weight (B, max_len),
    features = `pack_images` (B, max_patches…), patch_valid = its token validity. Rows
    longer than max_len lose their end (training rows; a prompt is never cut: UserError).
    → (batch, rows cut)."""
    b = len(examples)
    ids = np.full((b, max_len), pad_id, np.int32)
    valid = np.zeros((b, max_len), bool)
    weight = np.zeros((b, max_len), np.float32)
    cut = 0
    for i, e in enumerate(examples):
        n = min(len(e.ids), max_len)
        if n < len(e.ids):
            if left_pad:  # a prompt is never cut: its end is where generation starts
                raise UserError(f"a prompt of {len(e.ids)} tokens exceeds vl.max_len {max_len}")
            cut += 1
        sl = slice(max_len - n, max_len) if left_pad else slice(0, n)
        ids[i, sl], valid[i, sl], weight[i, sl] = e.ids[:n], True, e.weight[:n]
    packed = pack_images([e.images for e in examples], max_patches, geom)
    token_valid = packed.pop("token_valid")
    targets = np.concatenate([ids[:, 1:], np.full((b, 1), pad_id, np.int32)], 1)
    loss_weight = np.concatenate([weight[:, 1:], np.zeros((b, 1), np.float32)], 1)
    return {"ids": ids, "text_valid": valid, "targets": targets, "loss_weight": loss_weight,
            "features": packed, "patch_valid": token_valid, **loss_positions(loss_weight)}, cut
