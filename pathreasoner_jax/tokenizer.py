"""Tokenizers: a local Hugging Face directory through `AutoTokenizer`, with the format tags
added as single special tokens, and the byte-level BPE the demo trains on its own corpus.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterable

CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
IMAGE_TOKEN = "<image>"
FORMAT_TAGS = ["<observe>", "</observe>", "<think>", "</think>", "<answer>", "</answer>"]
SPECIAL_TOKENS = CHAT_TOKENS + [IMAGE_TOKEN] + FORMAT_TAGS

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the training and reward code needs; tags are single tokens (SPEC §2)."""
    pad: int
    eos: int
    im_start: int
    im_end: int
    image: int
    observe_open: int
    observe_close: int
    think_open: int
    think_close: int
    answer_open: int
    answer_close: int

    @property
    def tags(self) -> tuple[int, int, int, int, int, int]:
        return (self.observe_open, self.observe_close, self.think_open, self.think_close,
                self.answer_open, self.answer_close)


def load_tokenizer(path: str):
    """Loads a tokenizer from a local directory and adds the image and format tags.

    Chat models end an assistant turn with `<|im_end|>`, so that is the EOS used for
    generation; Qwen's pad is `<|endoftext|>` (SPEC §6: never infer masks from pad ids).
    """
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: tokenizer directory does not exist")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    if not getattr(tok, "chat_template", None):
        tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def special_ids(tok) -> SpecialIds:
    ids = tok.convert_tokens_to_ids
    return SpecialIds(
        pad=tok.pad_token_id, eos=ids("<|im_end|>"), im_start=ids("<|im_start|>"),
        im_end=ids("<|im_end|>"), image=ids(IMAGE_TOKEN),
        observe_open=ids("<observe>"), observe_close=ids("</observe>"),
        think_open=ids("<think>"), think_close=ids("</think>"),
        answer_open=ids("<answer>"), answer_close=ids("</answer>"))


def train_demo_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 2048) -> str:
    """Trains a byte-level BPE on `texts` and saves it as a HF tokenizer directory.

    The directory is written under a temporary name and renamed, so a crash never leaves
    a half-written tokenizer behind.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=[IMAGE_TOKEN] + FORMAT_TAGS + ["<|im_start|>"])
    fast.chat_template = QWEN_CHAT_TEMPLATE
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tok-", dir=parent)
    fast.save_pretrained(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
