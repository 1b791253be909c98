"""Tiny random Qwen2.5-VL checkpoints made with transformers (CPU torch), and batches of
two rows with images of different sizes, left-padded, in both HF's and our layout."""
from __future__ import annotations

import numpy as np

VOCAB = 300
IMAGE_ID, VIDEO_ID, VISION_START, VISION_END = 290, 291, 288, 289
GRIDS = [(1, 8, 12), (1, 4, 6)]  # patch grids (t, h, w): 24 and 6 merged tokens
WINDOW = 56  # 2 merged units a side: the 8×12 image has 2×3 windows, the 4×6 one 1×2


def hf_config(layers: int = 2, depth: int = 2):
    from transformers import Qwen2_5_VLConfig
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[depth - 1], window_size=WINDOW, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=0)


def make_hf_qwen_vl(out_dir: str, seed: int = 0, **sizes):
    """A random Qwen2_5_VLForConditionalGeneration saved with save_pretrained. Biases and norm
    scales are perturbed (those code paths are exercised) and the embeddings / LM head drawn
    at unit scale, so that greedy decoding does not repeat one token."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(**sizes)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name or "ln_q" in name:
                p.add_(0.1 * torch.randn_like(p))
            if "embed_tokens" in name or "lm_head" in name:
                p.normal_(0.0, 1.0)
    model.save_pretrained(out_dir)
    return model


def two_row_batch(rng: np.random.Generator):
    """Row 0: text, image A (8×12), text, image B (4×6), text; row 1: text, image C (4×6),
    text; left-padded. → (ids (2,T), attention (2,T), HF pixel_values, HF grid_thw,
    our per-row [(pixels, grid)] lists)."""
    q = [t * h * w // 4 for t, h, w in GRIDS]
    row0 = [5, 6, VISION_START] + [IMAGE_ID] * q[0] + [VISION_END, 7, 8, 9, VISION_START] + [IMAGE_ID] * q[1] \
        + [VISION_END, 10, 11]
    row1 = [12, VISION_START] + [IMAGE_ID] * q[1] + [VISION_END, 13, 14, 15]
    t = max(len(row0), len(row1))
    ids, att = np.zeros((2, t), np.int64), np.zeros((2, t), np.int64)
    for b, r in enumerate((row0, row1)):
        ids[b, t - len(r):], att[b, t - len(r):] = r, 1
    pix = [rng.standard_normal((a * b * c, 1176)).astype(np.float32) for a, b, c in GRIDS + [GRIDS[1]]]
    grids = [np.asarray(g) for g in GRIDS + [GRIDS[1]]]
    rows = [[(pix[0], grids[0]), (pix[1], grids[1])], [(pix[2], grids[2])]]
    return ids, att, np.concatenate(pix), np.stack(grids), rows
