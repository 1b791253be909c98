"""What every VL command shares: the mesh, the tokenizer (with the image and format tags),
the image geometry, the encoder, and the Qwen2.5-VL built from `vl_model_dir` (+ a stage
checkpoint). `vl-init` (the demo) writes a random model folder through our own exporter
with transformers' `Qwen2_5_VLConfig`, so the recipe always starts from a HF directory.
"""
from __future__ import annotations

import dataclasses
import os

from pathreasoner_jax.config import LoRAConfig
from pathreasoner_jax.core.errors import UserError
from pathreasoner_jax.run_layout import RunLayout
from pathreasoner_jax.sharding import mesh_from_config
from pathreasoner_jax.tokenizer import load_tokenizer, special_ids
from pathreasoner_jax.vl.encode import VL_TOKENS, VLEncoder
from pathreasoner_jax.vl.preprocess import VisionGeometry


def add_vl_tokens(tok):
    missing = [t for t in VL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def lora_config(cfg) -> LoRAConfig | None:
    if cfg.vl.lora_rank <= 0:
        return None
    return dataclasses.replace(cfg.model.lora, enabled=True, rank=cfg.vl.lora_rank)


class VLRuntime:
    def __init__(self, cfg, mesh=None):
        self.cfg, self.layout = cfg, RunLayout(cfg)
        self.model_dir = self.layout.vl_model_dir
        if not os.path.isfile(os.path.join(self.model_dir, "config.json")):
            raise UserError(f"{self.model_dir}: no Qwen2.5-VL folder (set vl.hf_path, or run `pathreasoner vl-init`)")
        self.mesh = mesh or mesh_from_config(cfg.mesh)
        self.tokenizer = add_vl_tokens(load_tokenizer(self.model_dir))
        self.encoder_ids = special_ids(self.tokenizer)  # the format tags, pad and EOS
        from pathreasoner_jax.vl.convert import read_config
        hf = read_config(self.model_dir)
        v = hf["vision_config"]
        self.geom = VisionGeometry(patch_size=v.get("patch_size", 14), temporal_patch_size=v.get("temporal_patch_size", 2),
                                   merge_size=v.get("spatial_merge_size", 2), window_size=v.get("window_size", 112),
                                   min_pixels=cfg.vl.min_pixels, max_pixels=cfg.vl.max_pixels)
        vocab = {**hf, **hf.get("text_config", {})}["vocab_size"]
        if len(self.tokenizer) > vocab:
            raise UserError(f"{self.model_dir}: the tokenizer (with the image and format tags) has "
                            f"{len(self.tokenizer)} tokens, the model {vocab} embeddings")
        self.encoder = VLEncoder(self.tokenizer, self.geom, cfg.vl.sft_mask_mode, cfg.vl.sft_mask_rate)
        self.image_id = self.encoder.image_id
        if int(hf.get("image_token_id", self.image_id)) != self.image_id:
            raise UserError(f"{self.model_dir}: config.json's image_token_id {hf['image_token_id']} is not the "
                            f"tokenizer's <|image_pad|> ({self.image_id})")
        # the image slot of this model is <|image_pad|> (the slide model's is <image>)
        self.ids = dataclasses.replace(self.encoder_ids, image=self.image_id)

    def build_model(self, checkpoint: str = ""):
        """The model folder's weights (+ `checkpoint`'s params when given), on the mesh."""
        from pathreasoner_jax.checkpoint import restore_params
        from pathreasoner_jax.vl.convert import load_qwen_vl
        v = self.cfg.vl
        model = load_qwen_vl(self.model_dir, self.mesh, lora_config(self.cfg), v.param_dtype, v.compute_dtype,
                             v.remat, self.cfg.model.logits_chunk, seed=self.cfg.run.seed,
                             attention_block=self.cfg.model.attention_block)
        if checkpoint:
            restore_params(checkpoint, model)
        return model
