"""The config dataclass tree: sections `model` (`llm`, `slide`, `lora`), `data`, `mesh`, `sft`,
`grpo`, `rewards`, `eval`, `clip` (Patho-CLIP), `run`, `bench`, with their defaults. Loading lives in `loader.py`,
the value rules in `checks.py`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class LLMConfig:
    """Qwen2/Qwen2.5 decoder. `hf_path` (a local HF directory) overrides the sizes."""
    hf_path: str = ""
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768


@dataclass
class SlideEncoderConfig:
    """LongNet slide encoder (SPEC §3) and projector."""
    feature_dim: int = 512
    width: int = 512
    ffn_dim: int = 1024
    num_layers: int = 2
    num_heads: int = 8
    segment_lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    dropout: float = 0.1
    drop_path: float = 0.1
    layer_norm_eps: float = 1e-5


@dataclass
class LoRAConfig:
    enabled: bool = True
    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.1
    targets: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class ModelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    slide: SlideEncoderConfig = field(default_factory=SlideEncoderConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    tokenizer_path: str = ""  # "" : the tokenizer in llm.hf_path
    compute_dtype: str = "bfloat16"
    param_dtype: str = "float32"
    attention_impl: str = "auto"  # auto | xla | cudnn
    # > 0: causal self-attention (training and prefill) in query blocks of this many tokens,
    # each over the keys up to its own end: half the score work, and on XLA:CPU ~3× faster
    # fwd+bwd at 576 tokens (models/attention.py); 0: one block
    attention_block: int = 0
    remat: bool = False  # rematerialise each decoder layer in the backward pass
    logits_chunk: int = 2048  # tokens per chunk of the fp32 logits in the loss (0: all at once)
    image_token: str = "<image>"


@dataclass
class DataConfig:
    """Data preparation inputs/outputs and the training input pipeline."""
    slides_dir: str = ""
    features_dir: str = ""
    reports_path: str = ""
    kg_path: str = ""
    kg_format: str = "pathology"  # pathology | primekg | pathoml
    prep_dir: str = ""  # "" : runs/<name>/prep
    encoder: str = "demo"  # demo | conch_v1
    encoder_weights: str = ""
    target_magnification: float = 20.0
    patch_size: int = 256
    default_magnification: float = 20.0
    num_clusters: int = 8
    # slide features in the slide shards: float32 | float16 | bfloat16 (16-bit halves a
    # 45k-patch × 512 slide from 92 to 46 MB; the model reads them in its compute dtype anyway)
    feature_dtype: str = "float32"
    # a slide with more patches is stored as ⌈N / slide_chunk_rows⌉ strided chunks, so the
    # loader reads ~sample_num rows of it, not all (data/slide_chunks.py); 0: one record per slide
    slide_chunk_rows: int = 2048
    augment_per_sample: int = 2
    reasoning_writer: str = "template"  # template | openai
    reasoning_url: str = ""
    reasoning_model: str = ""
    reasoning_api_key_env: str = "OPENAI_API_KEY"
    sample_num: int = 4096
    max_text_len: int = 512
    length_buckets: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192])
    shuffle_seed: int = 0
    num_workers: int = 0  # grain worker processes building SFT batches (0: in the training process)
    splits: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    demo_corpus: Optional[bool] = None  # None : build the demo corpus when no inputs are configured
    cache_dir: str = ".cache/demo"
    demo_num_slides: int = 48
    demo_task: str = "basic"  # basic (4 classes) | hard (8, confusable pairs; data_prep/demo/hard.py)
    demo_seed: int = -1  # -1 : run.seed
    min_tissue_fraction: float = 0.25
    read_threads: int = 4
    fuzzy_threshold: float = 0.88
    max_paths_per_pair: int = 50
    paths_top_k: int = 3
    stratify_max: int = 5000
    reasoning_timeout_s: float = 60.0
    reasoning_retries: int = 3
    reasoning_concurrency: int = 4


@dataclass
class MeshConfig:
    """Device mesh; -1 means "the remaining devices". Multi-host fields may come from env."""
    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    # devices splitting each sequence (LongNet's patches and the LLM's tokens) for whole
    # slides of 16k–64k patches; 1: sequences stay whole on a device
    context: int = 1
    coordinator_address: str = ""  # env PATHREASONER_COORDINATOR
    num_processes: int = 0  # env PATHREASONER_NUM_PROCESSES; 0 : single host
    process_id: int = -1  # env PATHREASONER_PROCESS_ID
    local_device_ids: list[int] = field(default_factory=list)


@dataclass
class SFTConfig:
    lr: float = 2e-5
    epochs: int = 3
    max_steps: int = 0  # 0 : from epochs
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    train_lora_only: bool = True  # False : full fine-tuning of the LLM
    freeze: list[str] = field(default_factory=list)  # any of llm, slide_encoder, projector
    trajectory_mask_mode: str = "none"  # none | loss | drop
    trajectory_mask_rate: float = 0.15
    pseudo_bag: bool = False
    pseudo_bag_q: float = 0.5
    prior_mu: float = 0.7
    prior_tau: float = 1.0
    prior_eps: float = 0.02
    prior_path: str = ""  # "" : runs/<name>/prior.npz
    checkpoint_every: int = 100
    eval_every: int = 100  # steps between validation losses on the val split (0: none)
    keep_last: int = 3
    init_from: str = ""
    max_nonfinite_steps: int = 3  # consecutive skipped (non-finite) steps tolerated; one more stops the stage


@dataclass
class GRPOConfig:
    group_size: int = 8
    prompts_per_step: int = 4
    steps: int = 100
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    lr: float = 3e-7
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    loss_agg: str = "seq-mean-token-mean"  # | token-mean | seq-mean-token-sum-norm
    kl_mode: str = "reward"  # reward | loss | none
    kl_coef: float = 0.05
    kl_beta: float = 0.04
    inner_epochs: int = 2
    micro_batches: int = 1  # log-prob passes and updates in this many row splits (gradient accumulation)
    # log-prob passes and updates run each prompt (slide tokens + question) once and its G
    # completions over its KV, as the rollout does (grpo/step.py); false: G full rows per prompt
    shared_prefix_update: bool = True
    disable_dropout: bool = True  # dropout off in rollouts, old log-probs and updates (as verl)
    adv_scale: str = "group"  # group | batch | none
    dynamic_sampling: bool = False
    max_sampling_tries: int = 3
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    mask_truncated: bool = False
    init_from: str = ""  # SFT checkpoint directory ("" : runs/<name>/checkpoints/sft)
    checkpoint_every: int = 50
    keep_last: int = 3
    max_nonfinite_steps: int = 3  # consecutive skipped (non-finite) iterations tolerated; one more stops


@dataclass
class RewardsConfig:
    # total = format_weight·format + semantic_weight·semantic + alpha·entity (SPEC §6)
    alpha: float = 0.5
    format_weight: float = 1.0
    semantic_weight: float = 1.0
    beta: float = 0.5
    semantic: str = "rouge"  # rouge | judge | self
    judge_url: str = ""
    judge_model: str = ""
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_timeout_s: float = 30.0
    judge_retries: int = 3
    judge_concurrency: int = 8
    # per prompt, at most this many KG neighbours of its ground-truth entities reach the
    # entity reward's soft term (the most similar; grpo.rewards.entity_dice)
    max_near: int = 256


@dataclass
class EvalConfig:
    split: str = "test"
    batch_size: int = 8
    max_new_tokens: int = 256
    reward_samples: int = 4  # completions per prompt for the sampled (expected) reward; 0: off
    judge: bool = False
    slidebench_csv: str = ""
    wsivqa_json: str = ""


@dataclass
class ClipConfig:
    """Patho-CLIP: `pathreasoner clip-data`, `clip`, `clip-eval`, `clip-export` (clip/)."""
    preset: str = "tiny"  # tiny | vit_b_16 | vit_l_14 (clip/model.py PRESETS); hf_path / openclip_path override
    hf_path: str = ""  # local HF CLIPModel folder to start from (config.json, *.safetensors, tokenizer)
    openclip_path: str = ""  # open_clip checkpoint: .safetensors, or .pt/.bin read with torch weights_only
    tokenizer_path: str = ""  # "" : hf_path's tokenizer, else the one clip-data trains on the captions
    image_size: int = 0  # 0: the preset's (pixels per side)
    context_length: int = 0  # 0: the preset's (text tokens incl. start and end)
    compute_dtype: str = "float32"
    # data (clip-data): a captions CSV (image_path, caption [, label]) and/or class folders;
    # neither: tile–caption pairs cut from the demo slides, captions from the demo KG
    data_dir: str = ""  # "" : runs/<name>/clip_data
    captions_csv: str = ""
    image_root: str = ""  # base of relative image_path values ("" : the CSV's folder)
    class_folders: str = ""  # one sub-folder of images per class (zero-shot evaluation set)
    demo_tiles_per_slide: int = 16
    demo_tile_size: int = 64  # pixels of a demo tile (read at the slide's base level)
    splits: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    # training (clip)
    loss: str = "infonce"  # infonce | siglip
    batch_size: int = 64  # global rows per step (over data × fsdp)
    grad_accum: int = 1  # micro-batches per step; exact for the contrastive loss (clip/step.py)
    epochs: int = 10
    max_steps: int = 0  # 0 : from epochs
    lr: float = 5e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.2
    grad_clip: float = 1.0
    max_logit_scale: float = 100.0  # exp(logit_scale) is clamped to this (CLIP, open_clip)
    checkpoint_every: int = 100
    keep_last: int = 2
    max_nonfinite_steps: int = 3  # consecutive skipped (non-finite) steps tolerated; one more stops training
    # evaluation (clip-eval)
    eval_batch_size: int = 64
    eval_split: str = "test"
    templates: list[str] = field(default_factory=lambda: [
        "an H&E image of {}.", "a histopathology image of {}.", "{} tissue.", "a microscopy image showing {}."])
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])


@dataclass
class VLConfig:
    """Patho-R1's recipe on images (Qwen2.5-VL): `vl-data`, `vl-init`, `vl-train --stage
    pretrain|sft|grpo`, `vl-eval`, `vl-export` (vl/)."""
    hf_path: str = ""  # local Qwen2.5-VL folder (config.json, safetensors, tokenizer); "" : the one vl-init makes
    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    lora_rank: int = 0  # > 0: LoRA adapters on the LLM (model.lora's targets/alpha/dropout); the LLM base frozen
    # images (the processor's budget per image) and batch shapes (one compile per stage)
    min_pixels: int = 3136  # 56 × 56
    max_pixels: int = 1003520  # 28 × 28 × 1280 (Qwen2.5-VL's processor default)
    max_patches: int = 4096  # 14-px patches per row over its images (a multiple of 4)
    max_len: int = 2048  # tokens per row (image tokens included)
    # data (vl-data): importers, or (none given) the demo: tiles of the demo slides
    data_dir: str = ""  # "" : runs/<name>/vl_data
    llava_json: str = ""  # LLaVA-style conversations (stage 2)
    captions_csv: str = ""  # Quilt/PathGen-style image_path, caption (stage 1)
    mcq_json: str = ""  # PathMMU-style multiple-choice questions (stage 3 and eval)
    image_root: str = ""  # base of relative image paths ("" : each file's folder)
    splits: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # train/val/test of imported records
    demo_shuffle_options: bool = True  # the demo MCQs' options shuffled per question (false: in class order)
    demo_tile_scales: list[int] = field(default_factory=lambda: [1])  # fields of view (× clip.demo_tile_size px)
    # vl-init (demo): a random Qwen2.5-VL of these sizes, written as a HF folder
    init_hidden: int = 64
    init_layers: int = 2
    init_heads: int = 4
    init_kv_heads: int = 2
    init_vision_hidden: int = 32
    init_vision_depth: int = 2
    init_vision_heads: int = 2
    init_vocab: int = 1024  # the demo tokenizer's size
    # stages
    batch_size: int = 8
    pretrain_mode: str = "projector"  # projector | vision+projector | full
    pretrain_steps: int = 100
    pretrain_lr: float = 1e-3
    sft_steps: int = 100
    sft_lr: float = 5e-4
    sft_mask_mode: str = "none"  # none | loss | drop (CoT sentences of <observe>/<think>; data/encode.py)
    sft_mask_rate: float = 0.0
    sft_freeze_vision: bool = True
    grpo_steps: int = 50
    grpo_lr: float = 2e-5
    grpo_prompts: int = 4  # prompts per step (group_size completions each; grpo.* for the rest)
    group_size: int = 8
    max_new_tokens: int = 48
    temperature: float = 1.0
    format_weight: float = 0.5  # MCQ reward = accuracy + format_weight × format
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    keep_last: int = 2
    max_nonfinite_steps: int = 3
    # evaluation (vl-eval)
    eval_split: str = "test"
    eval_batch_size: int = 16
    eval_new_tokens: int = 48


@dataclass
class RunConfig:
    name: str = "default"
    root: str = "runs"
    seed: int = 0
    log_every: int = 10
    progress: bool = True


@dataclass
class BenchConfig:
    """`pathreasoner bench` knobs; 0 means "from the rest of the config" (see benchmarks/cli.py)."""
    batch: int = 0  # sft: rows per step (0: sft.batch_size); rollout: prompts (0: grpo.prompts_per_step)
    seq_len: int = 0  # sft row / rollout prompt length incl. slide tokens (0: slide_tokens + 64 / + 32)
    slide_tokens: int = 0  # patches per slide = image tokens per row (0: data.sample_num)
    group_size: int = 0  # rollout completions per prompt (0: grpo.group_size)
    new_tokens: int = 0  # rollout tokens per completion (0: grpo.max_new_tokens)
    warmup: int = 2  # untimed calls per side (the first compiles)
    repeats: int = 5  # timed calls per side; the report gives the median
    rewards_batch_sizes: list[int] = field(default_factory=lambda: [64, 256, 1024])
    profile_dir: str = ""  # set: one extra call of our side under jax.profiler.trace(profile_dir)
    # prep-scale: the synthetic PrimeKG-shaped graph (PrimeKG's own size by default) and workload
    kg_nodes: int = 129375
    kg_edges: int = 8100498  # kg.csv rows (each undirected edge listed both ways)
    scale_reports: int = 500  # synthetic reports to link
    scale_pairs: int = 500  # (finding, diagnosis) pairs to search paths for
    scale_slides: int = 64  # slides in the store benchmark's shard
    scale_patches: int = 4096  # patches of each (512-d, bf16)
    samples_per_slide: int = 4  # trajectories per slide
    long_slide_patches: int = 45000  # the one whole-slide-sized slide read whole vs chunked
    loader_workers: list[int] = field(default_factory=lambda: [0, 2])  # grain worker counts to time
    loader_steps: int = 8  # timed loader batches per worker count
    # longslide: patch counts × context sizes; a case runs (not only compiles) below this many GiB
    longslide_patches: list[int] = field(default_factory=lambda: [4096, 16384, 65536])
    longslide_contexts: list[int] = field(default_factory=lambda: [1, 8])
    longslide_run_gib: float = 8.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    vl: VLConfig = field(default_factory=VLConfig)
    run: RunConfig = field(default_factory=RunConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.run.root, self.run.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named sections (all when none), for manifests and caches."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
