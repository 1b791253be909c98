"""A local HF tokenizer without our tags gets them as single special tokens."""
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pathreasoner_jax.tokenizer import FORMAT_TAGS, IMAGE_TOKEN, load_tokenizer, special_ids


def test_format_tags_become_single_tokens(tmp_path):
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["the tumour shows glands and nuclei"] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(str(tmp_path))
    tok = load_tokenizer(str(tmp_path))
    for tag in FORMAT_TAGS + [IMAGE_TOKEN, "<|im_start|>", "<|im_end|>"]:
        ids = tok.encode(f"x {tag} y", add_special_tokens=False)
        assert tok.convert_tokens_to_ids(tag) in ids
        assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag
    sid = special_ids(tok)
    assert len(set(sid.tags)) == 6 and sid.eos == tok.convert_tokens_to_ids("<|im_end|>")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
