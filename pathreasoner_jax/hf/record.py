"""What an imported checkpoint records about the model it was built for, and the check at
restore (`checkpoint.Checkpointer.restore` calls `differences` when the meta holds
`RECORD_KEY`).

The fields are read off the live PathVLM (not off a config), so the import and every later
restore describe a model the same way, whatever config built it: the LLM sizes, LoRA's
enabled/rank/targets, the LongNet sizes, attention pattern and epsilon, the image token id.
Dropout, drop-path, dtypes, remat and attention kernels are not recorded: they change how
the model is run, not which model it is. Keys are the config keys (`model.slide.width`).
"""
from __future__ import annotations

import json

RECORD_KEY = "model_fields"


def model_fields(model) -> dict:
    """{config key: value} describing a PathVLM (JSON types: tuples become lists)."""
    d = model.dims
    enc = model.slide_encoder
    width = int(enc.final_ln.scale.get_value().shape[0])
    out = {f"model.llm.{k}": getattr(d, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
        "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings")}
    out.update({"model.lora.enabled": d.lora_rank > 0, "model.lora.rank": d.lora_rank,
                "model.lora.targets": sorted(d.lora_targets)})
    out.update({
        "model.slide.feature_dim": int(enc.in_proj.kernel.get_value().shape[0]) if enc.in_proj is not None else width,
        "model.slide.width": width, "model.slide.num_layers": len(enc.layers),
        "model.slide.layer_norm_eps": enc.final_ln.eps})
    if len(enc.layers):
        layer = enc.layers[0]
        out.update({"model.slide.ffn_dim": int(layer.fc1.kernel.get_value().shape[1]),
                    "model.slide.num_heads": layer.attn.heads,
                    "model.slide.segment_lengths": list(layer.attn.segments),
                    "model.slide.dilations": list(layer.attn.dilations)})
    out["image_token_id"] = int(model.image_token_id)
    return json.loads(json.dumps(out))


def differences(recorded: dict, model) -> list[str]:
    """'key: A in the checkpoint, B here' for every recorded field the model differs in."""
    now = model_fields(model)
    return [f"{k}: {recorded[k]!r} in the checkpoint, {now.get(k)!r} here"
            for k in sorted(recorded) if recorded[k] != now.get(k)]
