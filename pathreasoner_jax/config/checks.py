"""Every constrained config value, checked when the config loads, as one flat table.

`RULES` maps a dotted key to its check (or a tuple of checks, applied in order). The
allowed sets are those of the code that consumes each value (named in the comments);
tests/test_config_checks.py keeps them equal to the consumers' own constants. Keys left
out take any value of their type (paths, names, URLs, flags). A cross-field rule
(`relation`) sits under the key it reports and names the other keys with their sources.
The batch sizes are checked against a fixed mesh only where the config sets them: a
mesh preset (configs/mesh/*.yaml) is a mesh section meant to be combined with a run
config, and loads alone with the default batch sizes.
"""
from __future__ import annotations

from pathreasoner_jax.config.rulekit import (Pred, above, at_least, each, find_problems, if_no_hf_path, if_set,
                                             in_range, non_empty, one_of, relation)
from pathreasoner_jax.core.errors import ConfigError
from pathreasoner_jax.records import FEATURE_DTYPES

# The consumers' allowed values (the test compares each with the constant named).
DTYPES = ("float32", "bfloat16", "float16")                  # models/vlm.py DTYPES, memory.py _BYTES
ATTENTION_IMPLS = ("auto", "xla", "cudnn")                   # models/attention.py _pick
KG_FORMATS = ("pathology", "primekg", "pathoml")             # data_prep/kg.py load_kg
ENCODERS = ("demo", "conch_v1", "patho_clip")                # slides/encoders.py ENCODERS
REASONING_WRITERS = ("template", "openai")                   # data_prep/writers.py build_writer
TRAJECTORY_MASK_MODES = ("none", "loss", "drop")             # data/encode.py ExampleEncoder
FREEZABLE = ("llm", "slide_encoder", "projector")            # train/params.py MODULES
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj",      # models/qwen2.py Attention and MLP
                "gate_proj", "up_proj", "down_proj")
LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")  # grpo/losses.py AGGREGATIONS
KL_MODES = ("reward", "loss", "none")                        # grpo/losses.py KL_MODES, grpo/iteration.py
ADV_SCALES = ("group", "batch", "none")                      # grpo/advantages.py ADV_SCALES
SEMANTIC_REWARDS = ("rouge", "judge", "self")                # grpo/reward_fn.py make_reward_fn
SPLITS = ("train", "val", "test")                            # records.py SPLITS, data_prep/splits.py
CLIP_PRESETS = ("tiny", "vit_b_16", "vit_l_14")              # clip/model.py PRESETS
CLIP_LOSSES = ("infonce", "siglip")                          # clip/loss.py LOSSES
VL_PRETRAIN_MODES = ("projector", "vision+projector", "full")  # vl/stages.py PRETRAIN_MODES

prob = in_range(0, 1)
drop_rate = in_range(0, 1, hi_open=True, why="dropout scales the kept values by 1 / (1 - rate)")
count = at_least(1)
positive = above(0)
non_negative = at_least(0)


def _mesh_axis() -> Pred:
    return Pred(lambda v: v == -1 or v >= 1, "must be >= 1, or -1 for the remaining devices")


def _fractions(v) -> bool:
    return 1 <= len(v) <= 3 and all(x >= 0 for x in v) and abs(sum(v) - 1.0) <= 1e-6


def _ascending(v) -> bool:
    return all(a < b for a, b in zip(v, v[1:]))


def _mesh_multiple(rows: int, data: int, fsdp: int) -> bool:
    return data == -1 or fsdp == -1 or rows % (data * fsdp) == 0


SPLIT_FRACTIONS = Pred(lambda v: len(v) == 3 and all(x >= 0 for x in v) and abs(sum(v) - 1) <= 1e-6,
                       "must be three fractions (train, val, test) >= 0 summing to 1")

RULES: dict = {
    # ---------------------------------------------------------------- model
    "model.compute_dtype": one_of(*DTYPES),
    "model.param_dtype": one_of(*DTYPES),
    "model.attention_impl": one_of(*ATTENTION_IMPLS),
    "model.attention_block": at_least(0, why="0: one block"),
    "model.logits_chunk": at_least(0, why="0: the whole sequence at once"),
    "model.image_token": non_empty(),
    "model.llm.vocab_size": count,
    "model.llm.hidden_size": count,
    "model.llm.intermediate_size": count,
    "model.llm.num_layers": count,
    "model.llm.num_heads": (count, if_no_hf_path(relation(
        ["model.llm.hidden_size", "model.llm.head_dim"], lambda h, hidden, hd: hd != 0 or hidden % h == 0,
        "must divide {0} when {1}", why="the head size is then hidden_size // num_heads"))),
    "model.llm.num_kv_heads": (count, if_no_hf_path(relation(
        ["model.llm.num_heads"], lambda kv, h: h % kv == 0, "must divide {0}",
        why="grouped-query attention: each KV head serves num_heads / num_kv_heads query heads"))),
    "model.llm.head_dim": (at_least(0, why="0: hidden_size // num_heads"), if_no_hf_path(relation(
        ["model.llm.hidden_size", "model.llm.num_heads"], lambda hd, hidden, h: (hd or hidden // h) % 2 == 0,
        "must give an even head size (with {0}, {1})", why="RoPE rotates the two halves of each head"))),
    "model.llm.rope_theta": positive,
    "model.llm.rms_norm_eps": positive,
    "model.llm.max_position_embeddings": count,
    "model.slide.feature_dim": count,
    "model.slide.width": count,
    "model.slide.ffn_dim": count,
    "model.slide.num_layers": count,
    "model.slide.num_heads": (count, relation(
        ["model.slide.width"], lambda h, w: w % h == 0, "must divide {0}",
        why="models/longnet.py splits the width into num_heads heads")),
    "model.slide.segment_lengths": (non_empty(why="LongNet needs at least one branch"), each(count)),
    "model.slide.dilations": (each(count), relation(
        ["model.slide.segment_lengths"], lambda d, s: len(d) == len(s), "must have one entry per segment length, {0}",
        why="models/longnet.py pairs them into branches and drops the unpaired ones")),
    "model.slide.dropout": drop_rate,
    "model.slide.drop_path": drop_rate,
    "model.slide.layer_norm_eps": positive,
    "model.lora.rank": count,
    "model.lora.alpha": positive,
    "model.lora.dropout": drop_rate,
    "model.lora.targets": each(one_of(*LORA_TARGETS)),
    # ---------------------------------------------------------------- data
    "data.kg_format": one_of(*KG_FORMATS),
    "data.feature_dtype": one_of(*FEATURE_DTYPES),
    "data.slide_chunk_rows": at_least(0, why="0 stores each slide as one record"),
    "data.encoder": one_of(*ENCODERS),
    "data.reasoning_writer": one_of(*REASONING_WRITERS),
    "data.target_magnification": positive,
    "data.default_magnification": positive,
    "data.patch_size": at_least(16, why="smaller patches hold no tissue structure for the encoder"),
    "data.num_clusters": count,
    "data.augment_per_sample": at_least(0, why="variants in addition to each sample"),
    "data.sample_num": at_least(0, why="0: whole slides (runtime.whole_slide_sample_num)"),
    "data.max_text_len": count,
    "data.length_buckets": (non_empty(), each(count),
                            Pred(_ascending, "must be in ascending order, each bucket longer than the last"),
                            relation(["mesh.context"], lambda bs, c: all(b % c == 0 for b in bs),
                                     "must be multiples of {0}",
                                     why="the token sequence splits evenly over the context axis or not at all")),
    "data.shuffle_seed": non_negative,
    "data.num_workers": non_negative,
    "data.splits": Pred(_fractions, "must be 1 to 3 non-negative fractions (train, val, test) summing to 1"),
    "data.demo_num_slides": count,
    "data.demo_task": one_of("basic", "hard"),
    "data.demo_seed": at_least(-1, why="-1: run.seed"),
    "data.min_tissue_fraction": prob,
    "data.read_threads": count,
    "data.fuzzy_threshold": prob,
    "data.max_paths_per_pair": count,
    "data.paths_top_k": count,
    "data.stratify_max": non_negative,
    "data.reasoning_timeout_s": positive,
    "data.reasoning_retries": non_negative,
    "data.reasoning_concurrency": count,
    # ---------------------------------------------------------------- mesh
    "mesh.data": _mesh_axis(),
    "mesh.fsdp": (_mesh_axis(), relation(
        ["mesh.data"], lambda f, d: not (f == -1 and d == -1), "may not be -1 as well as {0}",
        why="one axis at most takes the remaining devices")),
    "mesh.tensor": (_mesh_axis(), relation(
        ["mesh.data", "mesh.fsdp"], lambda t, d, f: not (t == -1 and -1 in (d, f)), "may not be -1 with {0}, {1}",
        why="one axis at most takes the remaining devices")),
    "mesh.context": count,
    "mesh.num_processes": at_least(0, why="0: single host, or PATHREASONER_NUM_PROCESSES"),
    "mesh.process_id": (at_least(-1, why="-1: PATHREASONER_PROCESS_ID"), relation(
        ["mesh.num_processes"], lambda p, n: p < 0 or n <= 0 or p < n, "must be below {0}",
        why="process ids run from 0 to num_processes - 1")),
    "mesh.local_device_ids": each(non_negative),
    # ---------------------------------------------------------------- sft
    "sft.lr": positive,
    "sft.epochs": count,
    "sft.max_steps": at_least(0, why="0: from epochs"),
    "sft.batch_size": (count, relation(
        ["sft.grad_accum"], lambda b, a: b % a == 0, "must be divisible by {0}",
        why="sft/step.py split_batch cuts each batch into grad_accum equal micro-batches"), if_set(relation(
            ["mesh.data", "mesh.fsdp"], _mesh_multiple, "must be a multiple of {0} × {1}",
            why="train/stage.py shard_rows splits each batch over data × fsdp"))),
    "sft.grad_accum": count,
    "sft.warmup_ratio": prob,
    "sft.weight_decay": non_negative,
    "sft.grad_clip": at_least(0, why="0: no clipping"),
    "sft.freeze": each(one_of(*FREEZABLE)),
    "sft.trajectory_mask_mode": one_of(*TRAJECTORY_MASK_MODES),
    "sft.trajectory_mask_rate": prob,
    "sft.pseudo_bag_q": prob,
    "sft.prior_mu": prob,
    "sft.prior_tau": above(0, why="a softmax temperature"),
    "sft.prior_eps": prob,
    "sft.checkpoint_every": count,
    "sft.eval_every": at_least(0, why="0: no validation loss"),
    "sft.keep_last": count,
    "sft.max_nonfinite_steps": at_least(0, why="0: the first non-finite step stops the stage"),
    # ---------------------------------------------------------------- grpo
    "grpo.group_size": at_least(2, why="GRPO needs two completions per prompt to compare"),
    "grpo.prompts_per_step": (count, if_set(relation(
        ["grpo.group_size", "mesh.data", "mesh.fsdp"], lambda p, g, d, f: _mesh_multiple(p * g, d, f),
        "× {0} must be a multiple of {1} × {2}",
        why="grpo/step.py splits the prompts_per_step × group_size rows of an update over data × fsdp"))),
    "grpo.micro_batches": (count, relation(
        ["grpo.prompts_per_step", "grpo.group_size"], lambda m, p, g: (p * g) % m == 0,
        "must divide {0} × {1}", why="grpo/step.py splits an update's rows into equal micro-batches"),
        if_set(relation(["grpo.prompts_per_step", "grpo.group_size", "mesh.data", "mesh.fsdp"],
                        lambda m, p, g, d, f: (p * g) % m != 0 or _mesh_multiple(p * g // m, d, f),
                        "makes micro-batches of {0} × {1} / micro_batches rows, not a multiple of {2} × {3}",
                        why="each micro-batch's rows are split over data × fsdp")),
        relation(["grpo.shared_prefix_update", "grpo.prompts_per_step"], lambda m, s, p: not s or p % m == 0,
                 "must divide {1} when {0} is on",
                 why="a shared-prefix micro-batch holds whole prompts with their G completions")),
    "grpo.steps": count,
    "grpo.max_new_tokens": count,
    "grpo.temperature": above(0, why="logits are divided by it"),
    "grpo.top_p": in_range(0, 1, lo_open=True, why="1: no nucleus filtering"),
    "grpo.top_k": at_least(0, why="0: no top-k filtering"),
    "grpo.lr": positive,
    "grpo.weight_decay": non_negative,
    "grpo.grad_clip": at_least(0, why="0: no clipping"),
    "grpo.clip_eps_low": non_negative,
    "grpo.clip_eps_high": non_negative,
    "grpo.loss_agg": one_of(*LOSS_AGGS),
    "grpo.kl_mode": one_of(*KL_MODES),
    "grpo.kl_coef": non_negative,
    "grpo.kl_beta": non_negative,
    "grpo.inner_epochs": count,
    "grpo.adv_scale": one_of(*ADV_SCALES),
    "grpo.max_sampling_tries": count,
    "grpo.overlong_buffer": (at_least(0, why="0: no overlong penalty"), relation(
        ["grpo.max_new_tokens"], lambda b, n: b <= n, "must be <= {0}",
        why="the penalty ramps over the last overlong_buffer tokens of the budget")),
    "grpo.overlong_penalty": non_negative,
    "grpo.checkpoint_every": count,
    "grpo.keep_last": count,
    "grpo.max_nonfinite_steps": at_least(0, why="0: the first non-finite step stops the stage"),
    # ---------------------------------------------------------------- rewards
    "rewards.alpha": non_negative,
    "rewards.format_weight": non_negative,
    "rewards.semantic_weight": non_negative,
    "rewards.beta": prob,
    "rewards.semantic": one_of(*SEMANTIC_REWARDS),
    "rewards.judge_timeout_s": positive,
    "rewards.judge_retries": non_negative,
    "rewards.judge_concurrency": count,
    "rewards.max_near": count,
    # ---------------------------------------------------------------- clip
    "clip.preset": one_of(*CLIP_PRESETS),
    "clip.image_size": (at_least(0, why="0: the preset's"), Pred(lambda v: v == 0 or v >= 14, "must be 0 or >= 14")),
    "clip.context_length": (at_least(0, why="0: the preset's"),
                            Pred(lambda v: v == 0 or v >= 3, "must be 0 or >= 3 (start, a token, end)")),
    "clip.compute_dtype": one_of(*DTYPES),
    "clip.demo_tiles_per_slide": count,
    "clip.demo_tile_size": at_least(16),
    "clip.splits": SPLIT_FRACTIONS,
    "clip.loss": one_of(*CLIP_LOSSES),
    "clip.batch_size": (at_least(2, why="a contrastive batch needs negatives"), relation(
        ["clip.grad_accum"], lambda b, m: b % m == 0, "must be a multiple of {0}",
        why="each micro-batch holds batch_size / grad_accum rows")),
    "clip.grad_accum": count,
    "clip.epochs": count,
    "clip.max_steps": at_least(0, why="0: from epochs"),
    "clip.lr": positive,
    "clip.warmup_ratio": in_range(0, 1, hi_open=True),
    "clip.weight_decay": non_negative,
    "clip.grad_clip": at_least(0, why="0: no clipping"),
    "clip.max_logit_scale": above(1),
    "clip.checkpoint_every": count,
    "clip.keep_last": count,
    "clip.max_nonfinite_steps": at_least(0, why="0: the first non-finite step stops training"),
    "clip.eval_batch_size": count,
    "clip.eval_split": one_of(*SPLITS),
    "clip.templates": (non_empty(), each(Pred(lambda t: "{}" in t, "must contain {} (where the class name goes)"))),
    "clip.retrieval_ks": (non_empty(), each(count)),
    # ---------------------------------------------------------------- vl (Qwen2.5-VL, Patho-R1)
    "vl.compute_dtype": one_of(*DTYPES),
    "vl.param_dtype": one_of(*DTYPES),
    "vl.lora_rank": at_least(0, why="0: no LoRA"),
    "vl.min_pixels": (at_least(784, why="one 28 × 28 merge unit"), relation(
        ["vl.max_pixels"], lambda lo, hi: lo <= hi, "must be <= {0}")),
    "vl.max_pixels": at_least(784),
    "vl.max_patches": (at_least(4), Pred(lambda v: v % 4 == 0, "must be a multiple of 4 (2 × 2 merge units)")),
    "vl.max_len": at_least(16),
    "vl.splits": SPLIT_FRACTIONS,
    "vl.demo_tile_scales": (non_empty(), each(count)),
    "vl.init_hidden": (at_least(8), relation(["vl.init_heads"], lambda h, n: h % n == 0 and (h // n) % 2 == 0,
                                            "must be an even multiple of {0} (head_dim is even)")),
    "vl.init_layers": count,
    "vl.init_heads": (count, relation(["vl.init_kv_heads"], lambda n, k: n % k == 0, "must be a multiple of {0}")),
    "vl.init_kv_heads": count,
    "vl.init_vision_hidden": (at_least(8), relation(["vl.init_vision_heads"], lambda h, n: h % (4 * n) == 0,
                                                   "must be a multiple of 4 × {0} (2-D rope splits head_dim in 4)")),
    "vl.init_vision_depth": count,
    "vl.init_vision_heads": count,
    "vl.init_vocab": at_least(300, why="the byte alphabet and the special tokens"),
    "vl.batch_size": count,
    "vl.pretrain_mode": one_of(*VL_PRETRAIN_MODES),
    "vl.pretrain_steps": non_negative,
    "vl.pretrain_lr": positive,
    "vl.sft_steps": non_negative,
    "vl.sft_lr": positive,
    "vl.sft_mask_mode": one_of(*TRAJECTORY_MASK_MODES),
    "vl.sft_mask_rate": in_range(0, 1),
    "vl.grpo_steps": non_negative,
    "vl.grpo_lr": positive,
    "vl.grpo_prompts": count,
    "vl.group_size": at_least(2, why="group-relative advantages need two completions"),
    "vl.max_new_tokens": count,
    "vl.temperature": positive,
    "vl.format_weight": non_negative,
    "vl.warmup_ratio": in_range(0, 1, hi_open=True),
    "vl.weight_decay": non_negative,
    "vl.grad_clip": at_least(0, why="0: no clipping"),
    "vl.checkpoint_every": count,
    "vl.keep_last": count,
    "vl.max_nonfinite_steps": at_least(0, why="0: the first non-finite step stops training"),
    "vl.eval_split": one_of(*SPLITS),
    "vl.eval_batch_size": count,
    "vl.eval_new_tokens": count,
    # ---------------------------------------------------------------- eval, run, bench
    "eval.split": one_of(*SPLITS, why="the splits `prepare` writes"),
    "eval.batch_size": count,
    "eval.max_new_tokens": count,
    "eval.reward_samples": at_least(0, why="0: no sampled reward"),
    "run.seed": non_negative,
    "run.log_every": count,
    "bench.batch": at_least(0, why="0: sft.batch_size / grpo.prompts_per_step"),
    "bench.seq_len": at_least(0, why="0: from the slide tokens"),
    "bench.slide_tokens": at_least(0, why="0: data.sample_num"),
    "bench.group_size": at_least(0, why="0: grpo.group_size"),
    "bench.new_tokens": at_least(0, why="0: grpo.max_new_tokens"),
    "bench.warmup": non_negative,
    "bench.repeats": count,
    "bench.rewards_batch_sizes": (non_empty(), each(count)),
    "bench.kg_nodes": at_least(20, why="the synthetic KG needs a few nodes of each of its 10 types"),
    "bench.kg_edges": at_least(2),
    "bench.scale_reports": count,
    "bench.scale_pairs": count,
    "bench.scale_slides": count,
    "bench.scale_patches": count,
    "bench.samples_per_slide": count,
    "bench.long_slide_patches": count,
    "bench.loader_workers": (non_empty(), each(non_negative)),
    "bench.loader_steps": count,
    "bench.longslide_patches": (non_empty(), each(count)),
    "bench.longslide_contexts": (non_empty(), each(count)),
    "bench.longslide_run_gib": positive,
}


def problems(cfg, sources: dict) -> list[str]:
    """Every rule the config breaks, one line each (empty when it is valid)."""
    return find_problems(RULES, cfg, sources)


def validate(cfg, sources: dict) -> None:
    """Raises `ConfigError` listing every broken rule (`; `-separated, one line)."""
    found = problems(cfg, sources)
    if found:
        raise ConfigError("; ".join(found))
