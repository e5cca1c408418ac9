"""Configuration: one small dataclass per stage, the presets, and `--key=value` overrides.

Every stage takes a dataclass whose fields are commented and whose defaults are laptop sized. A preset
(`micro`, `tiny`, `small`, `gpt2`) fills in the model shape and the preset-specific defaults; a user's
`--key=value` flags then override single fields, checked against the field's type:

    cfg = make_config(PretrainConfig, preset="tiny", overrides=["--max_steps=200", "--lr=1e-3"])

Deliberate simplifications: no YAML, no nesting, no registries. A field is an int, float, bool or str;
the preset table below is the only place where defaults differ between presets.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

# ----------------------------------------------------------------------------------------------------
# Presets. Model shapes plus per-stage defaults that depend on the size of the model.

PRESETS: dict[str, dict] = {
    # tests only: every stage runs in seconds
    "micro": {
        "model": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512),
        "pretrain": dict(max_steps=60, batch_size=16, lr=3e-3),
        "sft": dict(max_steps=30, batch_size=16, lr=0.001, ptx_coef=0.0),
        "reward": dict(max_steps=20, batch_size=16, lr=0.001, calibration_prompts=32),
        "pairs": dict(n_prompts=48),
        "ppo": dict(iterations=4, batch_size=16, minibatch_size=8, lr=0.0001),
        "dpo": dict(max_steps=10, batch_size=8, lr=0.0001),
        "grpo": dict(iterations=4, prompts_per_iteration=4, group_size=4, minibatch_size=8, lr=0.0001),
        "best_of_n": dict(batch_size=32),
    },
    # CPU: the whole pipeline in <= 15 minutes on 2 cores
    "tiny": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=2048),
        "pretrain": dict(max_steps=800, batch_size=32, lr=2e-3),
        "sft": dict(max_steps=600, batch_size=32, lr=2e-3, ptx_coef=0.5, ptx_batch_size=8),
        "reward": dict(max_steps=300, batch_size=32, lr=0.0005, calibration_prompts=256),
        "pairs": dict(n_prompts=600),
        "ppo": dict(iterations=60, batch_size=64, minibatch_size=16, lr=5e-05),
        "dpo": dict(max_steps=150, batch_size=32, lr=5e-05),
        "grpo": dict(iterations=40, prompts_per_iteration=16, group_size=8, minibatch_size=32, lr=5e-05),
        "best_of_n": dict(batch_size=256),
    },
    # one laptop GPU: the whole pipeline in a few minutes
    "small": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=4096),
        "pretrain": dict(max_steps=3000, batch_size=64, lr=1e-3),
        "sft": dict(max_steps=600, batch_size=64, lr=2e-4, ptx_coef=0.5, ptx_batch_size=16),
        "reward": dict(max_steps=500, batch_size=64, lr=0.0002, calibration_prompts=512),
        "pairs": dict(n_prompts=2000),
        "ppo": dict(iterations=150, batch_size=128, minibatch_size=32, lr=2e-05),
        "dpo": dict(max_steps=300, batch_size=64, lr=2e-05),
        "grpo": dict(iterations=100, prompts_per_iteration=32, group_size=8, minibatch_size=64, lr=2e-05),
        "best_of_n": dict(batch_size=256),
    },
    # the GPT-2 124M shape (big GPU, or imported GPT-2 weights)
    "gpt2": {
        "model": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
        "pretrain": dict(max_steps=5000, batch_size=16, lr=6e-4),
        "sft": dict(max_steps=1000, batch_size=32, lr=5e-05, ptx_coef=0.0),
        "reward": dict(max_steps=1000, batch_size=32, lr=1e-05, calibration_prompts=512),
        "pairs": dict(n_prompts=4000),
        "ppo": dict(iterations=300, batch_size=128, minibatch_size=16, lr=1e-05),
        "dpo": dict(max_steps=500, batch_size=32, lr=5e-07),
        "grpo": dict(iterations=200, prompts_per_iteration=32, group_size=8, minibatch_size=32, lr=1e-05),
        "best_of_n": dict(batch_size=64),
    },
}


def default_preset() -> str:
    """`tiny` on CPU, `small` when CUDA is available."""
    return "small" if torch.cuda.is_available() else "tiny"


# ----------------------------------------------------------------------------------------------------
# Stage configs


@dataclass
class ModelConfig:
    """Shape of the GPT (GPT-2 architecture)."""

    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # channels C
    block_size: int = 128  # maximum context length T
    vocab_size: int = 2048  # tokenizer size V (BPE ranks + special tokens)
    dropout: float = 0.0  # dropout probability (pretraining only; always 0 in RL stages)
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2


@dataclass
class WorldConfig:
    """`minirlhf world`: build the synthetic TinyWorld into out/<preset>/world/."""

    preset: str = "tiny"  # sizes the world (number of facts, documents, prompts, pairs)
    seed: int = 1337  # the same seed gives byte-identical files
    out_dir: str = "out"  # artifacts go to <out_dir>/<preset>/world/
    force: bool = False  # rebuild even if the files exist and the config is unchanged


@dataclass
class TrainConfig:
    """Fields every training stage shares (pretrain, SFT, reward model, DPO family): run and optimiser."""

    stage: ClassVar[str] = ""  # the PRESETS section with this stage's defaults
    preset: str = "tiny"  # model shape and size-dependent defaults (see PRESETS)
    seed: int = 1337  # seeds data order, init and dropout; same seed, same device -> same numbers
    out_dir: str = "out"  # artifacts go to <out_dir>/<preset>/<stage>/
    force: bool = False  # retrain even if a finished model with the same config, inputs and code exists
    resume: bool = False  # continue from the last checkpoint (ckpt.pt) in the stage folder
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    max_steps: int = 0  # optimiser steps; 0 = from preset
    batch_size: int = 0  # sequences per optimiser step; 0 = from preset
    grad_accum: int = 1  # micro-batches per optimiser step (each of batch_size / grad_accum sequences; validation
    #                      and DPO's reference passes run in batches of that size too, so it bounds their memory)
    lr: float = 0.0  # peak learning rate; 0 = from preset
    min_lr_ratio: float = 0.1  # the cosine schedule decays to lr * min_lr_ratio
    warmup_steps: int = 50  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW weight decay (not on biases, norms or embeddings)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    eval_interval: int = 200  # steps between validation evaluations (and checkpoints)
    log_interval: int = 10  # steps between metrics.jsonl lines
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "float32", "bfloat16"
    progress: bool = True  # show a tqdm progress bar
    max_minutes: float = 0.0  # stop after this many minutes, keeping the model, not reused as finished (0 = no limit)
    stop_after: int = 0  # stop after this step as if interrupted, leaving ckpt.pt for --resume (0 = off)


@dataclass
class PretrainConfig(TrainConfig):
    """`minirlhf pretrain`: train the tokenizer (if needed) and a GPT on a plain-text corpus."""

    stage: ClassVar[str] = "pretrain"
    corpus: str = ""  # .txt (documents separated by <|endoftext|>) or .jsonl {"text"}; "" = the world's corpus
    tokenizer: str = "train"  # "train": our BPE trained on the corpus; "gpt2": tiktoken's GPT-2 encoding (local files)
    n_layer: int = 0  # transformer blocks; 0 = from preset
    n_head: int = 0  # attention heads; 0 = from preset
    n_embd: int = 0  # channels; 0 = from preset
    block_size: int = 0  # context length; 0 = from preset
    vocab_size: int = 0  # tokenizer size, special tokens included; 0 = from preset
    dropout: float = 0.0  # dropout during pretraining
    val_fraction: float = 0.05  # share of documents held out for validation loss
    eval_batches: int = 8  # batches averaged for one validation loss
    compile: bool = False  # torch.compile the model (CUDA only)


@dataclass
class SFTConfig(TrainConfig):
    """`minirlhf sft`: supervised fine-tuning on (prompt, ideal response) demonstrations."""

    stage: ClassVar[str] = "sft"
    aliases: ClassVar[dict[str, str]] = {"sft_data": "data"}  # --sft-data is --data
    init: str = ""  # checkpoint to start from; "" = out/<preset>/pretrain/model.pt
    data: str = ""  # SFT JSONL ({"prompt","completion"} or {"messages"}); "" = the world's sft.jsonl
    eval_data: str = ""  # held-out demonstrations for validation loss; "" = the world's sft_eval.jsonl
    truncate: bool = False  # cut conversations longer than the context (and report how many) instead of failing
    dropout: float = 0.0  # dropout during SFT
    init_chat_embeddings: bool = True  # start <|user|>, <|assistant|>, <|end|> from the forum's "Q:", "\nA:", "\n"
    ptx_coef: float = -1.0  # weight of a pretraining-loss term mixed into every step (keeps base knowledge); 0 = off, -1 = from preset
    freeze_embeddings: bool = False  # train only the chat tokens' rows of the (tied) embedding matrix
    embedding_lr_scale: float = 0.1  # learning-rate multiplier for the token and position embeddings (see sft.py)
    ptx_batch_size: int = 0  # pretraining windows per step for that term; 0 = the preset's value where it sets one, else batch_size
    gold_judge: str = ""  # "module:function" (or "file.py:function") scoring (prompt, response) -> float; "" = the world's judge
    warmup_steps: int = 20  # linear warm-up steps
    eval_interval: int = 100  # steps between validation evaluations (and checkpoints)
    compile: bool = False  # torch.compile the model (CUDA only)


@dataclass
class RewardConfig(TrainConfig):
    """`minirlhf reward`: the reward model (SFT trunk + scalar head) on preference pairs."""

    stage: ClassVar[str] = "reward"
    init: str = ""  # checkpoint for the trunk; "" = out/<preset>/sft/model.pt
    prefs: str = ""  # preference JSONL {"prompt","chosen","rejected"}; "" = out/<preset>/pairs/prefs.jsonl
    eval_prefs: str = ""  # held-out pairs for validation accuracy; "" = the world's prefs_eval.jsonl
    prompts: str = ""  # RL prompts whose SFT samples calibrate the scores; "" = the world's rl_prompts.jsonl
    run_name: str = ""  # folder under out/<preset>/ for this run's artifacts; "" = "reward"
    margin_coef: float = 0.0  # Llama-2-style margin: coef * max(0, logit(annotator p_chosen)) (0 = off)
    center_coef: float = 0.0  # reward centering: coef * mean((r_chosen + r_rejected)^2) (0 = off)
    soft_labels: bool = False  # target = the annotator's p_chosen (as many votes would give), not the one label
    length_head_coef: float = 0.0  # ODIN: a second head absorbs length, weight of its disentangling loss (0 = off)
    truncate: bool = False  # drop over-long / identical pairs (and report the count) instead of failing
    calibration_prompts: int = 0  # SFT samples used to normalise the scores to mean 0, std 1; 0 = from preset
    max_new_tokens: int = 48  # length of those samples
    temperature: float = 1.0  # sampling temperature of those samples (PPO's rollout temperature)
    warmup_steps: int = 20  # linear warm-up steps
    eval_interval: int = 100  # steps between validation evaluations (and checkpoints)


@dataclass
class PPOConfig:
    """`minirlhf ppo`: PPO against the reward model, KL-penalised towards the SFT reference."""

    stage: ClassVar[str] = "ppo"
    preset: str = "tiny"  # finds the SFT model, the reward model and the world
    seed: int = 1337  # rollouts, minibatch order and init
    out_dir: str = "out"  # artifacts in <out_dir>/<preset>/ppo/
    force: bool = False  # retrain even if the inputs are unchanged
    resume: bool = False  # continue from the last checkpoint (ckpt.pt) in the run's folder
    device: str = "auto"  # "auto", "cpu", "cuda"
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "float32", "bfloat16"
    init: str = ""  # policy and reference init; "" = out/<preset>/sft/model.pt
    run_name: str = ""  # folder under out/<preset>/ for this run's artifacts; "" = "ppo" (reward=rm) or "ppo_gold"
    reward_model: str = ""  # "" = out/<preset>/reward/model.pt
    value_init: str = ""  # value model init (trunk + head); "" = the reward model (InstructGPT)
    value_model: str = "separate"  # "separate" (own trunk, from the RM) or "shared" (a head on the policy's trunk)
    reward: str = "rm"  # "rm": the reward model's score; "gold": the gold judge itself (the ceiling a perfect reward model would give)
    prompts: str = ""  # RL prompts; "" = the world's rl_prompts.jsonl
    iterations: int = 0  # rollout + optimise iterations; 0 = from preset
    batch_size: int = 0  # rollouts per iteration; 0 = from preset
    rollout_shards: int = 0  # rollouts sampled in this many shards, each seeded by (seed, iteration, shard); 0 = one per process
    minibatch_size: int = 0  # rollouts per gradient step; 0 = from preset
    ppo_epochs: int = 2  # passes over each rollout batch
    lr: float = 0.0  # learning rate for policy and value model; 0 = from preset
    anneal_lr: bool = True  # decay the learning rate linearly to 0 over the iterations
    temperature: float = 1.0  # sampling temperature, used identically when log-probs are recomputed
    max_new_tokens: int = 48  # response budget in tokens
    kl_coef: float = 0.2  # initial KL coefficient beta in r - beta * KL
    adaptive_kl: bool = True  # Ziegler et al. 2019 adaptive controller (false = fixed kl_coef)
    kl_target: float = 1.0  # target sequence KL (nats) for the adaptive controller
    kl_horizon: int = 500  # controller horizon in rollouts (smaller = faster reaction)
    kl_estimator: str = "k1"  # KL estimator in the reward: "k1" (log ratio) or "k3"
    whiten_rewards: bool = False  # whiten the scores over the batch before shaping
    missing_eos_penalty: float = 1.0  # subtracted from the score of a response that never emitted <|end|>
    cliprange: float = 0.2  # PPO ratio clip epsilon
    cliprange_value: float = 0.2  # value clip around the old values (0 = no value clipping)
    vf_coef: float = 0.1  # weight of the value loss
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    grad_clip: float = 1.0  # clip the global gradient norm (0 = off)
    ptx_coef: float = 0.0  # PPO-ptx: weight gamma of the pretraining log-likelihood mixed in (InstructGPT eq. 2)
    ptx_batch_size: int = 0  # pretraining windows per minibatch for that term; 0 = minibatch_size
    eval_interval: int = 20  # iterations between evaluations on held-out prompts (and checkpoints)
    samples_per_eval: int = 8  # held-out samples of every evaluation kept in eval_samples.jsonl
    gold_judge: str = ""  # "module:function" (or "file.py:function") scoring (prompt, response) -> float; "" = the world's judge
    progress: bool = True  # progress bar
    stop_after: int = 0  # stop after this iteration as if interrupted, leaving ckpt.pt for --resume (0 = off)


@dataclass
class PairsConfig:
    """`minirlhf pairs`: on-policy preference pairs from the SFT model, labelled by the simulated annotators."""

    stage: ClassVar[str] = "pairs"

    preset: str = "tiny"  # finds the SFT model and the world
    seed: int = 1337  # sampling and labelling seed
    out_dir: str = "out"  # writes <out_dir>/<preset>/pairs/prefs.jsonl
    run_name: str = ""  # folder under out/<preset>/ for this run's pairs; "" = "pairs"
    force: bool = False  # rebuild even if the inputs are unchanged
    device: str = "auto"  # "auto", "cpu", "cuda"
    init: str = ""  # the policy to sample from; "" = out/<preset>/sft/model.pt
    prompts: str = ""  # RL prompts to sample on; "" = the world's rl_prompts.jsonl
    templated: str = ""  # templated pairs mixed in; "" = the world's prefs.jsonl
    n_prompts: int = -1  # prompts sampled on (samples_per_prompt // 2 pairs each; more with --pairing=all); 0 = templated pairs only, -1 = from preset
    samples_per_prompt: int = 2  # responses per prompt (at least 2: a pair is two of them)
    pairing: str = "disjoint"  # "disjoint": samples (1,2), (3,4), ...; "all": every pair of distinct samples; "best_worst": the two ends of an annotator's ranking
    mix_templated: bool = True  # mix the world's templated pairs in; false = on-policy pairs only
    temperature: float = 1.0  # sampling temperature
    max_new_tokens: int = 48  # response budget in tokens


@dataclass
class EvalConfig:
    """`minirlhf eval`: evaluate a chat policy against the world (gold reward, KL, refusals, ...)."""

    checkpoint: str = ""  # the policy's model.pt (e.g. out/tiny/sft/model.pt)
    preset: str = "tiny"  # finds the world, the pretrain data and the default reference/reward model
    out_dir: str = "out"  # where the preset's stage folders are
    reference: str = ""  # model.pt to measure KL against; "" = out/<preset>/sft/model.pt if it exists
    reward_model: str = ""  # reward model.pt for the proxy reward; "" = out/<preset>/reward/model.pt if it exists
    temperature: float = 1.0  # sampling temperature (1 = the policy itself, 0 = greedy); KL is of the policy as sampled
    max_new_tokens: int = 48  # response budget in tokens
    n_train: int = 120  # RL prompts evaluated besides eval_prompts.jsonl (whose third are training-split too)
    seed: int = 0  # sampling seed: same seed, same numbers
    seeds: str = ""  # comma-separated seeds, e.g. 1,2,3,4,5: evaluate once per seed, report mean and std (replaces --seed)
    device: str = "auto"  # "auto", "cpu", "cuda"
    output: str = ""  # JSON file for the metrics; "" = eval.json next to the checkpoint
    gold_judge: str = ""  # "module:function" (or "file.py:function") scoring (prompt, response) -> float; "" = the world's judge


@dataclass
class DPOConfig(TrainConfig):
    """`minirlhf dpo`: DPO and its paired family (cDPO, IPO, SimPO, ORPO) trained straight on preference pairs."""

    stage: ClassVar[str] = "dpo"
    loss: str = "dpo"  # dpo | cdpo | ipo | kto | simpo | orpo
    init: str = ""  # policy init; "" = out/<preset>/sft/model.pt (the base model for orpo)
    run_name: str = ""  # folder under out/<preset>/ for this run's artifacts; "" = "dpo" or "dpo_<loss>"
    reference: str = ""  # reference model; "" = out/<preset>/sft/model.pt
    prefs: str = ""  # preference JSONL; "" = out/<preset>/pairs/prefs.jsonl
    eval_prefs: str = ""  # held-out pairs for the validation metrics; "" = the world's prefs_eval.jsonl
    beta: float = 0.1  # DPO/cDPO temperature beta (Rafailov et al. 2023)
    label_smoothing: float = 0.1  # cDPO: assumed share of flipped labels
    tau: float = 0.1  # IPO regularisation tau (Azar et al. 2023)
    simpo_beta: float = 2.0  # SimPO reward scale (Meng et al. 2024)
    simpo_gamma: float = 0.5  # SimPO target margin
    orpo_lambda: float = 0.1  # ORPO weight of the odds-ratio term (Hong et al. 2024)
    rpo_alpha: float = 0.0  # dpo/cdpo/ipo: + alpha * per-token NLL of the chosen responses (RPO); 0 = off
    kto_data: str = ""  # KTO JSONL {"prompt","completion","label"}; "" = the preference pairs, unpaired
    kto_desirable_weight: float = 1.0  # KTO lambda_D (Ethayarajh et al. 2024)
    kto_undesirable_weight: float = 1.0  # KTO lambda_U
    precompute_ref: bool = True  # reference log-probs computed once and cached (false: reference model kept)
    truncate: bool = False  # drop over-long / identical pairs (and report the count) instead of failing
    warmup_steps: int = 10  # linear warm-up steps
    eval_interval: int = 50  # steps between validation evaluations (and checkpoints)
    weight_decay: float = 0.0  # AdamW weight decay
    gold_judge: str = ""  # "module:function" (or "file.py:function") scoring (prompt, response) -> float; "" = the world's judge


@dataclass
class GRPOConfig:
    """`minirlhf grpo`: GRPO (group-relative advantages, no value model) against the reward model or the gold judge."""

    stage: ClassVar[str] = "grpo"
    preset: str = "tiny"  # finds the SFT model, the reward model and the world
    seed: int = 1337  # rollouts, prompt order and minibatch order
    out_dir: str = "out"  # artifacts in <out_dir>/<preset>/<run_name>/
    run_name: str = ""  # folder under out/<preset>/ for this run's artifacts; "" = "grpo" (reward=rm) or "grpo_gold"
    force: bool = False  # retrain even if the inputs are unchanged
    resume: bool = False  # continue from the last checkpoint (ckpt.pt) in the run's folder
    device: str = "auto"  # "auto", "cpu", "cuda"
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "float32", "bfloat16"
    init: str = ""  # policy and reference init; "" = out/<preset>/sft/model.pt
    reward: str = "rm"  # "rm": the reward model's score; "gold": the gold judge itself (verifiable rewards)
    reward_model: str = ""  # "" = out/<preset>/reward/model.pt (with reward=gold: only for the proxy column, if present)
    prompts: str = ""  # "" = the world's rl_prompts.jsonl; a category (e.g. arithmetic) = only those; or a JSONL path
    iterations: int = 0  # rollout + optimise iterations; 0 = from preset
    prompts_per_iteration: int = 0  # distinct prompts per iteration; 0 = from preset
    group_size: int = 0  # responses G sampled per prompt (>= 2); 0 = from preset
    rollout_shards: int = 0  # rollouts sampled in this many shards of whole groups, each seeded by (seed, iteration, shard); 0 = one per process
    minibatch_size: int = 0  # responses per gradient step; 0 = from preset
    ppo_epochs: int = 1  # passes over each rollout batch (1: each response once; the ratio is exactly 1 only on each iteration's first minibatch)
    lr: float = 0.0  # learning rate; 0 = from preset
    anneal_lr: bool = False  # decay the learning rate linearly to 0 over the iterations
    temperature: float = 1.0  # sampling temperature, used identically when log-probs are recomputed
    max_new_tokens: int = 48  # response budget in tokens
    beta: float = 0.04  # weight of the k3 KL to the SFT reference in the loss (0 = no KL term, no reference pass)
    epsilon: float = 0.2  # ratio clip epsilon
    scale_rewards: bool = True  # divide the group-centred rewards by the group std (false = Dr. GRPO, mean only)
    missing_eos_penalty: float = 1.0  # subtracted from the reward of a response that never emitted <|end|>
    grad_clip: float = 1.0  # clip the global gradient norm (0 = off)
    eval_interval: int = 20  # iterations between evaluations on held-out prompts (and checkpoints)
    task_eval_samples: int = 4  # with --prompts=<category>: sampled responses per prompt when measuring its accuracy
    gold_judge: str = ""  # "module:function" (or "file.py:function") scoring (prompt, response) -> float; "" = the world's judge
    progress: bool = True  # progress bar
    stop_after: int = 0  # stop after this iteration as if interrupted, leaving ckpt.pt for --resume (0 = off)


@dataclass
class BestOfNConfig:
    """`minirlhf best-of-n`: sample n responses per held-out prompt from SFT, keep the reward model's favourite."""

    stage: ClassVar[str] = "best_of_n"
    preset: str = "tiny"  # finds the SFT model, the reward model and the world
    seed: int = 1337  # sampling seed
    out_dir: str = "out"  # results in <out_dir>/<preset>/best_of_n/summary.json
    force: bool = False  # resample even if the inputs are unchanged
    device: str = "auto"  # "auto", "cpu", "cuda"
    init: str = ""  # the policy to sample from; "" = out/<preset>/sft/model.pt
    reward_model: str = ""  # the selector; "" = out/<preset>/reward/model.pt
    ns: str = "1,2,4,8,16"  # comma-separated n values (one result row each)
    temperature: float = 1.0  # sampling temperature
    max_new_tokens: int = 48  # response budget in tokens
    batch_size: int = 0  # responses generated per forward batch; 0 = from preset
    missing_eos_penalty: float = 1.0  # subtracted from the reward-model score of a response without <|end|> when choosing
    gold_judge: str = ""  # "module:function" (or "file.py:function") scoring (prompt, response) -> float; "" = the world's judge


@dataclass
class FrontierConfig:
    """`minirlhf frontier`: gold reward vs KL to SFT for PPO, DPO, GRPO, best-of-n and a tempered SFT model."""

    preset: str = "tiny"  # finds the SFT model, the reward model, the pairs and the world
    seed: int = 1337  # one seed for every run and every measurement
    out_dir: str = "out"  # runs in <out_dir>/<preset>/frontier_<method>_<knob>/, the table in .../frontier/
    device: str = "auto"  # "auto", "cpu", "cuda"
    methods: str = "bon,ppo,dpo,grpo,temp"  # which methods to run (comma-separated)
    ppo_kl_coefs: str = "0.02,0.05,0.1,0.3"  # fixed PPO KL coefficients
    dpo_betas: str = "0.03,0.1,0.3,1.0"  # DPO temperatures beta
    grpo_betas: str = "0,0.02,0.1,0.5"  # GRPO k3 penalty weights
    bon_ns: str = "1,2,4,8,16"  # best-of-n sample counts
    temperatures: str = "0.9,0.8,0.7,0.5"  # the SFT model sampled at these temperatures (no training)
    plots_dir: str = "plots"  # the figure goes here
    caption: str = ""  # provenance printed on the figure (machine, commit, ...)
    progress: bool = False  # progress bars of the individual runs


@dataclass
class SampleConfig:
    """`minirlhf sample`: print continuations of a prompt from any checkpoint."""

    checkpoint: str = ""  # path to a model.pt (e.g. out/tiny/pretrain/model.pt)
    prompt: str = "The capital of France is"  # text to continue
    chat: bool = False  # wrap the prompt as a user turn (<|user|>...<|end|><|assistant|>) for chat models
    num_samples: int = 3  # how many continuations
    max_new_tokens: int = 48  # tokens per continuation
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # keep only the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus sampling mass (1 = off)
    seed: int = 0  # sampling seed
    device: str = "auto"  # "auto", "cpu", "cuda"


@dataclass
class ImportHFConfig:
    """`minirlhf import-hf PATH`: a Hugging Face GPT-2 folder -> our model.pt + tokenizer.json."""

    path: str = ""  # the folder: config.json, model.safetensors or pytorch_model.bin, tokenizer files
    out: str = ""  # where model.pt and tokenizer.json go; "" = out/hf/<folder name>
    tokenizer: str = "auto"  # "auto": the folder's vocab.json + merges.txt (or tokenizer.json); "gpt2": tiktoken's local GPT-2


@dataclass
class ExportHFConfig:
    """`minirlhf export-hf CHECKPOINT OUT`: our model.pt -> a folder that transformers' from_pretrained loads."""

    checkpoint: str = ""  # any stage's model.pt; a reward/value model exports as GPT2ForSequenceClassification
    out: str = ""  # the folder for config.json, model.safetensors and the tokenizer files


@dataclass
class PipelineConfig:
    """`minirlhf pipeline`: every stage in order, then a report and plots."""

    preset: str = ""  # "" = tiny on CPU, small on CUDA
    seed: int = 1337  # one seed for every stage
    out_dir: str = "out"  # artifacts in <out_dir>/<preset>/<stage>/, the report in <out_dir>/<preset>/report.md
    plots_dir: str = "plots"  # figures go here
    force: bool = False  # rerun every stage even if its inputs are unchanged
    device: str = "auto"  # "auto", "cpu", "cuda"
    dtype: str = "auto"  # training stages' precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "float32", "bfloat16"
    progress: bool = True  # progress bars
    truncate: bool = True  # stages cut or drop examples longer than the context (counted in the report)


# ----------------------------------------------------------------------------------------------------
# Building a config: dataclass defaults <- preset <- overrides


class ConfigError(ValueError):
    """A bad configuration key or value; the message says which key and what is valid."""


def fill_from_preset(cfg):
    """Fill the fields left at their "from preset" default with the preset's values: the model shape, then the
    stage's section. That default is 0 where 0 means nothing (steps, sizes, rates) and -1 where 0 is a
    setting a user may ask for (SFT's ptx_coef: 0 = no pretraining mix; pairs' n_prompts: 0 = no on-policy
    pairs), so `--ptx_coef=0` and `--n_prompts=0` are kept."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; valid presets: {', '.join(PRESETS)}")
    preset = PRESETS[cfg.preset]
    values = {**preset["model"], **preset.get(getattr(cfg, "stage", ""), {})}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in values and not isinstance(value, bool) and value == f.default:
            setattr(cfg, f.name, type(value)(values[f.name]))
    check_ranges(cfg)
    return cfg


# The ranges `check_ranges` enforces once the preset has filled its fields (so 0 / -1 "from preset" is gone).
_AT_LEAST_ONE = ("max_steps", "batch_size", "grad_accum", "eval_interval", "log_interval", "eval_batches",
                 "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "iterations", "minibatch_size",
                 "ppo_epochs", "max_new_tokens", "num_samples", "kl_horizon", "prompts_per_iteration",
                 "task_eval_samples")
_AT_LEAST_TWO = ("samples_per_prompt",)  # an on-policy pair is two responses to one prompt (GRPO's group_size: grpo.py)
_NOT_NEGATIVE = ("warmup_steps", "stop_after", "max_minutes", "rollout_shards", "ptx_batch_size", "grad_clip",
                 "weight_decay", "n_train", "cliprange_value", "vf_coef", "margin_coef", "center_coef",
                 "length_head_coef", "rpo_alpha", "samples_per_eval", "calibration_prompts", "missing_eos_penalty",
                 "kto_desirable_weight", "kto_undesirable_weight", "orpo_lambda", "simpo_gamma", "top_k",
                 "embedding_lr_scale", "kl_coef", "ptx_coef", "n_prompts")
# > 0, and so is DPO's beta (GRPO's may be 0); a temperature is >= 0 in `sample` and `eval`, where 0 is greedy decoding
_POSITIVE = ("lr", "tau", "simpo_beta", "cliprange", "kl_target", "temperature")
_UNIT = {"dropout": (0.0, 1.0, "[0, 1)"), "val_fraction": (0.0, 1.0, "(0, 1)"), "beta1": (0.0, 1.0, "[0, 1)"),
         "beta2": (0.0, 1.0, "[0, 1)"), "label_smoothing": (0.0, 0.5, "[0, 0.5)"),
         "min_lr_ratio": (0.0, 1.0, "[0, 1]"), "lam": (0.0, 1.0, "[0, 1]"), "gamma": (0.0, 1.0, "[0, 1]"),
         "epsilon": (0.0, 1.0, "(0, 1)"), "top_p": (0.0, 1.0, "(0, 1]")}
# Stages seed generators with about seed * 10**9 + step, and torch takes seeds up to 2**64 - 1.
SEED_MAX = 2**32 - 1


def check_ranges(cfg) -> None:
    """ConfigError naming the first option outside its range, before a stage reads or writes anything:
    counts and intervals >= 1 (pairs' samples_per_prompt >= 2), rates and weights >= 0 (learning rates, DPO's beta,
    PPO's cliprange and kl_target > 0), shares and probabilities in their interval, n_embd divisible by n_head,
    --seed in [0, SEED_MAX], --device auto / cpu / cuda / cuda:N, --dtype auto / float32 / bfloat16,
    --kl_estimator k1 or k3, a --prompt that is UTF-8 text. A temperature is > 0 in the stages that sample to
    learn or to choose (pairs, reward calibration, PPO, GRPO, best-of-n) and >= 0 in `sample` and `eval`,
    where 0 is greedy decoding. NaN and infinity are outside every range.
    Checked by `fill_from_preset`, after the preset has replaced its "from preset" defaults, and by `make_config`
    for a config without a preset."""
    names = {f.name for f in fields(cfg)}

    def bad(name, rule):
        raise ConfigError(f"--{name}={getattr(cfg, name)}: must be {rule}")

    for f in fields(cfg):  # in the order of the fields: the same option is named first on every run
        name, value = f.name, getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):  # --lr=inf trains to a NaN loss; --kl_coef=inf gives inf or NaN rewards
            bad(name, "a finite number")
        greedy = name == "temperature" and isinstance(cfg, (SampleConfig, EvalConfig))  # 0 = greedy decoding
        if name in _AT_LEAST_ONE and not value >= 1:
            bad(name, ">= 1")
        if name in _AT_LEAST_TWO and not value >= 2:
            bad(name, ">= 2")
        if ((name in _POSITIVE and not greedy) or (name == "beta" and isinstance(cfg, DPOConfig))) and not value > 0:
            bad(name, "> 0")
        if (name in _NOT_NEGATIVE or greedy) and not value >= 0:
            bad(name, ">= 0")
        if name == "seed" and not 0 <= value <= SEED_MAX:
            bad(name, f"in [0, {SEED_MAX}]")
        if name in _UNIT:
            low, high, text = _UNIT[name]
            closed_low, closed_high = text[0] == "[", text[-1] == "]"
            if not ((value >= low if closed_low else value > low) and (value <= high if closed_high else value < high)):
                bad(name, f"in {text}")
    if {"n_embd", "n_head"} <= names and cfg.n_head >= 1 and cfg.n_embd % cfg.n_head:
        raise ConfigError(f"--n_embd={cfg.n_embd} is not divisible by --n_head={cfg.n_head} (each head has "
                          "n_embd / n_head channels)")
    if "device" in names and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"--device={cfg.device!r}: expected auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    if "dtype" in names and cfg.dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"--dtype={cfg.dtype!r}: expected auto, float32 or bfloat16")
    if "kl_estimator" in names and cfg.kl_estimator not in ("k1", "k3"):
        raise ConfigError(f"--kl_estimator={cfg.kl_estimator!r}: expected k1 or k3")
    if "prompt" in names:
        try:
            cfg.prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # a command-line byte that is not UTF-8 arrives as U+DC80..U+DCFF
            raise ConfigError(f"--prompt={cfg.prompt!r}: not UTF-8 text (character {e.start}); give the prompt "
                              "in UTF-8") from None


def _parse_value(key: str, raw: str, typ: str):
    typ = typ if isinstance(typ, str) else typ.__name__
    try:
        if typ == "bool":
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"--{key}={raw!r}: expected a value of type {typ}") from None


def apply_overrides(cfg, overrides: list[str] | dict):
    """Apply `--key=value` strings (or a dict) to a config dataclass, checking names and types.

    `--flag` alone sets a bool field to True. Dashes and underscores in keys are interchangeable. A config
    class may declare `aliases` (a ClassVar dict alias -> field name), e.g. `--sft-data` for `--data`.
    An option given twice (an alias and its field count as one) is a ConfigError, not the last one winning.
    """
    by_name = {f.name: f for f in fields(cfg)}
    aliases = getattr(type(cfg), "aliases", {})  # e.g. SFTConfig: --sft-data is --data
    items: list[tuple[str, object, str]] = []  # (key, value, the option as written)
    if isinstance(overrides, dict):
        items = [(key, raw, f"{key}={raw!r}") for key, raw in overrides.items()]
    else:
        for arg in overrides:
            if not arg.startswith("--"):
                raise ConfigError(f"unexpected argument {arg!r}: options look like --key=value")
            key, eq, raw = arg[2:].partition("=")
            key = key.replace("-", "_")
            key = aliases.get(key, key)
            if not eq and key in by_name:  # `--flag` alone (an unknown one gets the error below, with the list)
                if by_name[key].type not in ("bool", bool):
                    raise ConfigError(f"{arg!r}: expected --{key}=value")
                raw = "true"
            items.append((key, raw, arg))
    given: dict[str, str] = {}  # key -> the option that set it
    for key, raw, written in items:
        key = key.replace("-", "_")
        key = aliases.get(key, key)
        if key not in by_name:
            valid = ", ".join(f"--{n}" for n in by_name)
            raise ConfigError(f"unknown option --{key} for {type(cfg).__name__}; valid options: {valid}")
        if key in given:
            raise ConfigError(f"--{key} given twice ({given[key]} and {written}); give it once")
        given[key] = written
        typ = by_name[key].type
        typ_name = typ if isinstance(typ, str) else typ.__name__
        if isinstance(raw, str):
            value = _parse_value(key, raw, typ_name)
        else:
            ok = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}[typ_name]
            if not isinstance(raw, ok) or (typ_name in ("int", "float") and isinstance(raw, bool)):
                raise ConfigError(f"{key}={raw!r}: expected a value of type {typ_name}")
            value = float(raw) if typ_name == "float" else raw
        setattr(cfg, key, value)
    return cfg


def make_config(cls, preset: str | None = None, overrides: list[str] | dict | None = None):
    """Build a stage config: defaults, then `preset`, then overrides, then preset fill-in, then `check_ranges`
    (every config, with a preset or without one: sample, import-hf, export-hf, a pipeline's "" = by device)."""
    cfg = cls()
    if preset is not None:
        cfg.preset = preset
    if overrides:
        apply_overrides(cfg, overrides)
    if hasattr(cfg, "preset") and (cfg.preset or cls is not PipelineConfig):  # "" is a preset only for the pipeline
        fill_from_preset(cfg)  # which checks the ranges
    else:
        check_ranges(cfg)
    return cfg


def model_config_from(cfg) -> ModelConfig:
    """The ModelConfig implied by a (preset-filled) stage config."""
    return ModelConfig(**{f.name: getattr(cfg, f.name) for f in fields(ModelConfig) if hasattr(cfg, f.name)})


def to_dict(cfg) -> dict:
    """The config dataclass as a plain dict (`dataclasses.asdict`): what config.json holds."""
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str) -> None:
    """Write config.json (atomically) next to a stage's artifacts."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(to_dict(cfg), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def stage_dir(cfg, stage: str) -> str:
    """out/<preset>/<stage>/, created if missing."""
    d = os.path.join(cfg.out_dir, cfg.preset, stage)
    os.makedirs(d, exist_ok=True)
    return d


__all__ = [
    "PRESETS", "ModelConfig", "WorldConfig", "PretrainConfig", "SFTConfig", "RewardConfig", "TrainConfig", "SampleConfig", "PipelineConfig", "EvalConfig", "ImportHFConfig", "ExportHFConfig", "PairsConfig", "PPOConfig", "DPOConfig", "GRPOConfig", "BestOfNConfig", "FrontierConfig", "ConfigError", "make_config",
    "apply_overrides", "check_ranges", "fill_from_preset", "model_config_from", "save_config", "stage_dir",
    "default_preset", "field",
]
