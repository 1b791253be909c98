"""CLIP inputs: images as `CLIPImageProcessor` prepares them, captions as CLIP tokenizes them.

- `preprocess_images`: resize the shortest edge to S (PIL bicubic, the long edge
  floored as HF computes it), centre crop S×S, scale to [0, 1], normalise with the
  OpenAI CLIP mean/std; channels last, (B, S, S, 3) float32.
- `train_clip_tokenizer`: a small lower-casing byte-level BPE trained on the captions,
  saved as a HF tokenizer folder; `<|startoftext|>` is bos, `<|endoftext|>` eos and pad
  (as in OpenAI CLIP, so a pad id never tells where a text ends: use the mask).
- `tokenize`: [bos] + tokens + [eos], cut to L with eos kept last, padded; the same ids
  and mask as `tokenizer(texts, padding="max_length", truncation=True, max_length=L)`.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from pathreasoner_jax.core.errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def to_pil(image) -> Image.Image:
    """PNG/JPEG bytes or an (H, W, 3) uint8 array → RGB PIL image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(image)))
        return img.convert("RGB") if img.mode != "RGB" else img
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {a.shape} {a.dtype}")
    return Image.fromarray(a)


def resize_crop(image, size: int) -> np.ndarray:
    """One image → (S, S, 3) uint8: shortest edge to S (bicubic), centre crop."""
    img = to_pil(image)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)  # HF floors the long edge (get_resize_output_image_size)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    img = img.resize((nw, nh), Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img)[top:top + size, left:left + size]


def normalize(pixels_u8: np.ndarray, mean=OPENAI_MEAN, std=OPENAI_STD) -> np.ndarray:
    """(..., 3) uint8 → float32 (x / 255 − mean) / std."""
    x = (pixels_u8.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess_images(images: Sequence, image_size: int, threads: int = 1, mean=OPENAI_MEAN,
                      std=OPENAI_STD) -> np.ndarray:
    """Images (H×W×3 uint8 arrays or PNG bytes, any sizes) → (B, S, S, 3) float32.

    threads > 1 decodes and resizes in a thread pool (PIL releases the GIL there)."""
    if threads > 1 and len(images) > 1:
        with ThreadPoolExecutor(threads) as ex:
            crops = list(ex.map(lambda im: resize_crop(im, image_size), images))
    else:
        crops = [resize_crop(im, image_size) for im in images]
    if not crops:
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return normalize(np.stack(crops), mean, std)


def train_clip_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 1024) -> str:
    """Trains a lower-cased byte-level BPE on `texts` and saves it as a HF tokenizer folder
    (tokenizer.json, tokenizer_config.json) under a temporary name, then renames it."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    # CLIP's normalisation: NFC, runs of whitespace to one space, lower case
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    # a leading space on every word, so a caption's first word tokenizes as it does inside
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts), trainer=trainer)
    bos, eos = bpe.token_to_id(BOS), bpe.token_to_id(EOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}", special_tokens=[(BOS, bos), (EOS, eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tok-", dir=parent)
    try:
        fast.save_pretrained(tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_clip_tokenizer(path: str):
    """A local HF tokenizer folder (ours, or a CLIPModel's); pad defaults to eos as in CLIP."""
    from transformers import AutoTokenizer

    if not path or not os.path.isdir(path):
        raise UserError(f"{path or '<empty path>'}: CLIP tokenizer folder not found (run `pathreasoner clip-data`, "
                        f"or set clip.tokenizer_path / clip.hf_path)")
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable tokenizer folder ({' '.join(str(e).split())})") from None
    if tok.eos_token_id is None:
        raise UserError(f"{path}: the tokenizer has no eos token (CLIP pools the text at its eos)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenize(tokenizer, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """texts → (ids (B, L) int32, mask (B, L) int32): [bos] + tokens + [eos], tokens cut so
    eos is always the last real token, then pad ids; mask 1 on real tokens (bos, eos too).
    A tokenizer without bos (SigLIP-style) gets tokens + [eos]."""
    L = int(context_length)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    head = [] if bos is None else [bos]
    room = L - len(head) - 1
    if room < 0:
        raise ValueError(f"context_length {L} leaves no room for the start and end tokens")
    texts = list(texts)
    ids = np.full((len(texts), L), pad, np.int32)
    mask = np.zeros((len(texts), L), np.int32)
    toks = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    for r, t in enumerate(toks):
        row = head + list(t[:room]) + [eos]
        ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    return ids, mask
