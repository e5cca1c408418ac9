"""PPO against the reward model, written as one loop that reads top to bottom in algorithm order.

Run it:
    minirlhf ppo --preset tiny                         # policy from SFT, value model from the reward model
    minirlhf ppo --preset tiny --kl_coef=0.01 --adaptive_kl=false --iterations=200   # over-optimise

Each iteration (InstructGPT, Ouyang et al. 2022 §3.5; Ziegler et al. 2019; CleanRL's ppo.py layout):
  1. ROLLOUT   sample one response per prompt from the policy at temperature T (KV-cache engine);
  2. SCORE     reward-model score at the last real token, minus `missing_eos_penalty` when the response
               never emitted <|end|>; log-probs of the policy (recomputed at the same T) and of the frozen
               reference (SFT) model; values from the separate value model (trunk + ScalarHead,
               initialised from the reward model); the batch is one `rl.Rollout` record from here on;
  3. SHAPE     per-token reward = -kl_coef * KL estimate, plus the score at the last real token;
  4. GAE       advantages and returns (gamma, lam); advantages whitened over real tokens;
  5. OPTIMISE  ppo_epochs x shuffled minibatches: clipped policy loss + vf_coef * clipped value loss,
               gradient clipping, learning rate annealed linearly;
  6. LOG       the metrics below, every iteration, to metrics.jsonl; the evaluation harness every
               `eval_interval` iterations and after the last one;
  7. CHECKPOINT ckpt.pt every `eval_interval` iterations, after the last and at `--stop_after` (see
               "Resuming" below).

Logged metrics (one row per iteration):
  iteration              1, 2, ... (the row's iteration)
  kl_coef                the KL coefficient used in this iteration's shaping (before the controller's update)
  lr                     the learning rate of this iteration
  objective/kl           mean over responses of the summed k1 = log pi - log pi_ref (the reward's KL term with the
                         default --kl_estimator=k1; the adaptive controller tracks it whichever estimator shapes)
  objective/kl_k3        the same with k3 (never negative; lower variance)
  objective/entropy      mean per-token entropy of the policy on its own samples
  objective/scores       mean reward-model score (after the missing-EOS penalty; never whitened)
  objective/non_score_reward  mean over responses of the summed -kl_coef * KL terms
  objective/rlhf_reward  scores + non_score_reward: what PPO maximises
  policy_loss, value_loss    the clipped policy loss and the clipped value loss, means over the minibatches
  ptx_loss               with --ptx_coef > 0: the next-token loss on pretraining windows, mean over minibatches
  policy/approx_kl       mean k3 estimate of KL(pi_old || pi), over the minibatches of every epoch
  policy/clipfrac        share of tokens where the clipped branch is active (ratio outside [1 - eps, 1 + eps]
                         on the side the advantage pushes it: zero gradient there), mean over the minibatches
  policy/ratio_mean, policy/ratio_max   the probability ratio pi / pi_old (mean over the minibatches, max)
  value/clipfrac         share of tokens where the clipped squared value error is the larger (the gradient is 0
                         there), mean over the minibatches
  value/explained_variance   1 - Var(returns - values) / Var(returns) on real tokens
  response/length, response/eos_rate
  seconds                wall time since the loop (re)started
  eval/*                 at evaluations only: the evaluation harness's numbers (`sft.world_eval`)

A NaN or inf loss stops the run with an error naming the iteration and the optimizer step, counted from 1
over the whole run: each iteration takes ppo_epochs x ceil(batch_size / minibatch_size) steps.

Resuming (`--resume`): ckpt.pt holds the policy's and the value model's (or shared value head's) weights,
the optimizer state, the iteration, the KL controller's coefficient, the state of the prompt-order
generator and the last row and evaluation. It is written every `eval_interval` iterations (after the
evaluation), after the last iteration and at `--stop_after`; on tiny it is about 26 MB and takes 0.07 s
on a 2-core CPU, against about 2 s per iteration. Every other random number is drawn from a generator
seeded by (seed, iteration, ...) -- rollouts, minibatch permutations, PPO-ptx windows -- and dropout is
off, so no other RNG state is needed: a resumed run ends exactly where an uninterrupted one would (on
CPU). The rows of metrics.jsonl past the checkpoint's iteration are dropped and written again.

Options worth flipping and comparing:
  --adaptive_kl=false       a fixed KL coefficient instead of Ziegler et al.'s controller
  --kl_estimator=k3         k3 instead of k1 in the per-token reward
  --whiten_rewards=true     whiten the scores over the batch before shaping (objective/scores stays raw)
  --cliprange_value=0       no value clipping
  --value_model=shared      the value head reads the policy's own hidden states: one trunk instead of
                            two (less memory, one forward pass); the value loss then also moves the policy
  --reward=gold             score rollouts with the gold judge instead of the reward model: the ceiling
                            PPO reaches with a perfect reward (outputs in out/<preset>/ppo_gold/; the value
                            model still starts from the reward model, whose score stays the proxy column)
  --ptx_coef=1.0            PPO-ptx (InstructGPT eq. 2): add ptx_coef * the next-token loss on pretraining
                            windows to every minibatch, so the policy keeps its language-model skills (held-out
                            perplexity is our proxy for the alignment tax, which InstructGPT measures as
                            regressions on public NLP benchmarks); logged as ptx_loss

Under torchrun (N processes; see distributed.py) it is the same algorithm on the same global batch:
  * the iteration's `batch_size` prompts are drawn identically on every rank; the batch is sampled in
    `rollout_shards` shards (default: one per process), shard s with its own generator seeded by
    (seed, iteration, s), and rank r samples and scores (reward model, pi_old, values, reference) only its
    own shards. The per-row results are then all-gathered (re-padded to a common width), so every rank
    holds the whole batch and the reward whitening, GAE, advantage whitening, the KL fed to the adaptive
    controller and every logged mean are computed on the global batch, identically on every rank.
    A one-process run with `--rollout_shards=N` samples exactly the same rollouts as N processes;
  * each minibatch (the same permutation on every rank) is split between the ranks; the policy and value
    losses are means over the minibatch's response tokens, so each rank weighs its part by its share of
    those tokens (the PPO-ptx term by its share of the windows) and DDP sums the gradients;
  * every rank samples its share of the evaluation prompts (`evaluate.evaluate_policy`); rank 0 alone
    writes metrics.jsonl, samples and the model.

Precision (`--dtype`, as in the supervised stages): "auto" runs the forward passes of the rollout, the
scoring and the optimisation under bf16 autocast on CUDA and in float32 on the CPU; "bfloat16" asks for
autocast on the CPU too, "float32" turns it off. Weights, optimizer state, log-probs (a float32
log-softmax of logits upcast from the autocast dtype), values, advantages and losses stay float32. Ratio 1 on the first minibatch needs the
scoring pass and the training pass to give the same log-probs: tested on the CPU in float32 and bf16;
on a GPU, kernels chosen by batch shape may differ in the last bits, which shows as policy/ratio_max a
hair above 1 in the first iteration.

Deliberate simplifications: one response per prompt; the rollout batch is optimised in memory; the shared
value head starts from zero (the reward model's head was trained on another trunk's features).
"""

from __future__ import annotations

import json
import os
import random

import torch
from tqdm import tqdm

from minirlhf import checkpoint as ck
from minirlhf import distributed as dist
from minirlhf import ops, rl
from minirlhf.chat import render_prompt
from minirlhf.common import (MetricsLog, Stopwatch, autocast, begin_writing, check_finite, check_resume,
                             check_same_tokenizer, config_key, file_digest, make_adamw, resolve_device, reusable,
                             rows_up_to, run_record, setup_torch, write_json)
from minirlhf.config import PPOConfig, fill_from_preset, stage_dir
from minirlhf.data import judge_prompt, prompt_text, read_jsonl, read_prompts
from minirlhf.engine import generate_sharded, response_logprobs
from minirlhf.losses import ppo_policy_loss, ppo_value_loss
from minirlhf.model import ScalarHead
from minirlhf.pretrain import get_batch, lm_loss, load_tokens
from minirlhf.sft import eval_headline, stage_file, tokenizer_of, world_eval, world_file

STAGE = "ppo"


def response_values(value_model, tokens, attention_mask, prompt_len: int):
    """V(s_t) for every response token t: the value head at the position that predicts token t, (B, N)."""
    return value_model(tokens, attention_mask)[:, prompt_len - 1:-1]


def policy_and_values(policy, critic, tokens, attention_mask, prompt_len: int):
    """Response logits (B, N, V) and values (B, N) for the response tokens of `tokens` (B, P + N).

    critic is either a separate value model (a ScalarModel with its own trunk) or a ScalarHead that reads
    the policy's hidden states (shared trunk: one forward pass serves both). Position t's outputs refer
    to the state before response token t, so both are read at positions P - 1 .. P + N - 2.
    """
    if isinstance(critic, ScalarHead):
        h = policy.hidden_states(tokens, attention_mask)[:, prompt_len - 1:-1]  # (B, N, C)
        return policy.lm_head(h), critic(h)
    logits = policy(tokens, attention_mask=attention_mask)[:, prompt_len - 1:-1]  # (B, N, V)
    return logits, response_values(critic, tokens, attention_mask, prompt_len)


class ActorCritic(torch.nn.Module):
    """The policy and its critic as one module, so that one DDP wrapper holds every trained parameter."""

    def __init__(self, policy, critic):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, tokens, attention_mask, prompt_len: int):
        """`policy_and_values` on tokens (B, P + N) -> response logits (B, N, V) and values (B, N)."""
        return policy_and_values(self.policy, self.critic, tokens, attention_mask, prompt_len)


def gold_score_fn(prompts: list[list[int]], texts: list[str], tok, judge_fn):
    """score_fn for `--reward=gold`: the judge on (prompt text, decoded response) of every rollout row.

    prompts: the rendered prompts (token ids), texts: what the judge reads for each. A row's real tokens
    (attention mask 1) start with its rendered prompt -- the longest rendered prompt that is a prefix of
    the row, so a multi-turn prompt is not mistaken for a shorter one it begins with -- and the rest is
    the response (ending with <|end|> when the policy emitted it, which the judge checks).
    """
    by_ids = {tuple(p): t for p, t in zip(prompts, texts)}
    lengths = sorted({len(p) for p in prompts}, reverse=True)

    def score(tokens, attention_mask):
        scores = []
        for row, keep in zip(tokens.tolist(), attention_mask.tolist()):
            real = [t for t, k in zip(row, keep) if k]
            n = next((n for n in lengths if tuple(real[:n]) in by_ids), None)
            if n is None:
                raise ValueError("ppo --reward=gold: a rollout does not start with any of the rendered prompts")
            scores.append(float(judge_fn(by_ids[tuple(real[:n])], tok.decode(real[n:]))))
        return torch.tensor(scores, dtype=torch.float32, device=tokens.device)  # (B,)

    return score


def resume_rl(stage: str, ckpt_path: str, cfg, inputs: dict | None, modules: dict, optimizer,
              order: random.Random) -> dict:
    """--resume for PPO and GRPO: check that ckpt.pt was written by this run (same settings and inputs:
    `common.check_resume`), load its weights into `modules` (name -> nn.Module), the optimizer state and the
    prompt-order generator's state; return the checkpoint (iteration, last_row, last_eval, and what else the
    stage saved, e.g. PPO's kl_coef)."""
    if not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; run without --resume first")
    state = ck.load_checkpoint(ckpt_path)
    check_resume(ckpt_path, state.get("run"), cfg, inputs)
    if state["iteration"] > cfg.iterations:
        raise ValueError(f"--resume: {ckpt_path} is at iteration {state['iteration']}, past "
                         f"--iterations={cfg.iterations}")
    for name, module in modules.items():
        module.load_state_dict(state[name])
    optimizer.load_state_dict(state["optimizer"])
    version, internal, gauss = state["prompt_order"]  # random.Random.getstate(), its tuple loaded back as a list
    order.setstate((version, tuple(internal), gauss))
    dist.print0(f"[{stage}] resuming after iteration {state['iteration']}")
    return state


def save_rl_checkpoint(ckpt_path: str, cfg, inputs: dict | None, modules: dict, optimizer, order: random.Random,
                       iteration: int, last_row: dict, last_eval: dict, **extra) -> None:
    """What `resume_rl` reads back, for PPO and GRPO: the weights of `modules` (name -> nn.Module), the
    optimizer state, the iteration, the prompt-order generator's state, the last row and evaluation, the
    run's settings and inputs (`common.run_record`) and `extra` (e.g. PPO's kl_coef). No global RNG state:
    every other random draw is seeded by (seed, iteration, ...)."""
    ck.save_checkpoint(ckpt_path, {**{name: module.state_dict() for name, module in modules.items()},
                                   "optimizer": optimizer.state_dict(), "iteration": iteration,
                                   "prompt_order": order.getstate(), "last_row": last_row, "last_eval": last_eval,
                                   "run": run_record(cfg, inputs), **extra})


def explained_variance(values, returns, mask) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over real tokens (1 = perfect, 0 = no better than a constant)."""
    var_returns = ops.masked_var(returns, mask)
    return 1 - ops.masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)


def train_ppo(policy, ref, value_model, score_fn, prompts: list[list[int]], tok, cfg, out: str,
              evaluate_fn=None, ptx_data=None, inputs: dict | None = None) -> dict:
    """The PPO loop. score_fn(tokens, attention_mask) -> (B,) scores (the reward model, or any function).

    value_model: a ScalarModel (separate trunk) or a ScalarHead on the policy's trunk (shared).
    prompts: token-id lists (rendered chat prompts). ptx_data: pretraining tokens (1-D array) for PPO-ptx
    when cfg.ptx_coef > 0. evaluate_fn(policy, iteration) -> {name: value}, called every eval_interval
    iterations and after the last. With cfg.resume, continues from `out`/ckpt.pt (see the module
    docstring), which must come from the same settings and `inputs` (the input digests, recorded in it);
    without, an old ckpt.pt there is removed first. cfg.stop_after = k stops after iteration k as if interrupted.
    Returns {"iterations" (done), "interrupted", "trained_iterations" (in this call), "seconds",
    "last_eval", "last_row", ...}.
    """
    device = policy.lm_head.weight.device
    ref.eval().requires_grad_(False)
    if cfg.ptx_coef > 0 and ptx_data is None:
        raise ValueError("ppo: ptx_coef > 0 needs pretraining tokens (ptx_data)")
    if cfg.eval_interval < 1:
        raise ValueError(f"--eval_interval={cfg.eval_interval}: must be >= 1 (iterations between evaluations "
                         "and checkpoints)")
    if cfg.temperature <= 0:
        raise ValueError(f"--temperature={cfg.temperature}: PPO samples its rollouts and trains on their "
                         "log-probs at that temperature, so it must be > 0")
    if cfg.batch_size > len(prompts):
        raise ValueError(f"--batch_size={cfg.batch_size}: each iteration draws that many distinct prompts, and "
                         f"there are {len(prompts)}")
    world, rank, main = dist.world_size(), dist.rank(), dist.is_main()
    shards = cfg.rollout_shards or world  # the rollout batch is sampled in this many seeded shards
    if shards % world or cfg.batch_size % shards:
        raise ValueError(f"--rollout_shards={shards} must be a multiple of the number of processes ({world}) "
                         f"and divide --batch_size={cfg.batch_size}")
    if world > 1 and (cfg.minibatch_size % world or cfg.batch_size % cfg.minibatch_size):
        raise ValueError(f"with {world} processes --minibatch_size={cfg.minibatch_size} must be divisible by "
                         f"{world} and divide --batch_size={cfg.batch_size}")
    ptx_batch = cfg.ptx_batch_size or cfg.minibatch_size
    autocast(device, cfg.dtype)  # a mistyped --dtype is an error now, not at the first rollout
    params = list(policy.parameters()) + list(value_model.parameters())
    optimizer = make_adamw(policy.optimizer_groups(0.0) + [{"params": list(value_model.parameters()),
                                                            "weight_decay": 0.0}], cfg.lr, (0.9, 0.95), device)
    kl_ctl = (rl.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else rl.FixedKLController(cfg.kl_coef))
    order = random.Random(cfg.seed)  # the prompt order: the one random state carried from iteration to iteration
    ckpt_path, metrics_path = os.path.join(out, "ckpt.pt"), os.path.join(out, "metrics.jsonl")
    start_it, row, last_eval = 0, {}, {}
    if cfg.resume:
        state = resume_rl(STAGE, ckpt_path, cfg, inputs, {"policy": policy, "value": value_model}, optimizer, order)
        kl_ctl.value = state["kl_coef"]
        start_it, row, last_eval = state["iteration"], state["last_row"], state["last_eval"]
    elif main and os.path.exists(ckpt_path):
        os.remove(ckpt_path)  # an earlier run's: a later --resume must not find it
    actor_critic = dist.data_parallel(ActorCritic(policy, value_model))  # DDP with several processes
    steps_per_iteration = cfg.ppo_epochs * len(range(0, cfg.batch_size, cfg.minibatch_size))  # optimizer steps
    # a new file; resuming, the rows up to the checkpoint stay
    log = MetricsLog(metrics_path, start_it if cfg.resume else None, enabled=main, key="iteration")
    watch = Stopwatch()
    rollout_tokens, rollout_seconds, done = 0, 0.0, start_it
    bar = tqdm(range(start_it, cfg.iterations), initial=start_it, total=cfg.iterations,
               disable=not (cfg.progress and main), desc=STAGE, ncols=100)
    for it in bar:
        # ---------------------------------------------------------------- 1. ROLLOUT (no grad)
        t0 = Stopwatch()
        batch = [prompts[i] for i in order.sample(range(len(prompts)), cfg.batch_size)]  # the same on every rank
        with autocast(device, cfg.dtype):  # bf16 on CUDA by default; log-probs are taken in float32 throughout
            g, _ = generate_sharded(policy, batch, shards, cfg.seed * 1_000_003 + it, cfg.max_new_tokens, tok.end_id,
                                    tok.pad_id, cfg.temperature)  # this rank's shards of the batch, at the global width
        P = g.prompt.size(1)
        tokens, attn, response, response_mask = g.tokens, g.attention_mask, g.response, g.response_mask  # (b, P + N), (b, N)
        mask = response_mask.float()  # (b, N)
        rollout_seconds += t0.seconds()

        # ---------------------------------------------------------------- 2. SCORE (no grad)
        policy.eval()
        with torch.no_grad(), autocast(device, cfg.dtype):
            ended = ((response == tok.end_id) & response_mask.bool()).any(1)  # (b,) emitted <|end|>
            scores = score_fn(tokens, attn).float()  # (b,)
            scores = scores - cfg.missing_eos_penalty * (~ended).float()
            logits, values = policy_and_values(policy, value_model, tokens, attn, P)  # (b, N, V), (b, N)
            values = values.float()  # (b, N) GAE and the value loss in float32
            logprobs, entropy = ops.logprobs_and_entropy(logits, response, cfg.temperature)  # (b, N) pi_old, same T
            entropy_sum = ops.masked_sum(entropy, mask, dim=1)  # (b,)
            ref_logprobs = response_logprobs(ref, tokens, attn, P, cfg.temperature)  # (b, N)
            # every rank's rows to every rank (rank order = shard order): from here on, the whole batch (B rows)
            tokens, attn, mask, ended, scores, logprobs, values, ref_logprobs, entropy_sum = (
                dist.all_gather_rows(x) for x in
                (tokens, attn, mask, ended.float(), scores, logprobs, values, ref_logprobs, entropy_sum))
            ended = ended.bool()  # (B,)
            entropy = entropy_sum.sum() / mask.sum()  # mean per-token entropy over the batch's response tokens
        ro = rl.Rollout(query=tokens[:, :P], query_mask=attn[:, :P], response=tokens[:, P:], response_mask=mask,
                        logprobs=logprobs, ref_logprobs=ref_logprobs, values=values, scores=scores)  # (B, ...)
        # what the shaping adds at the last token: the scores, or (--whiten_rewards) the scores whitened over
        # the batch; the logged objective/scores and rlhf_reward stay the raw scores
        shaped_scores = ops.masked_whiten(scores, torch.ones_like(scores)) if cfg.whiten_rewards else scores  # (B,)

        rollout_tokens += int(ro.response_mask.sum())  # the whole batch's response tokens

        # ---------------------------------------------------------------- 3. SHAPE
        kl_coef = kl_ctl.value
        ro.rewards = rl.shape_rewards(shaped_scores, ro.logprobs, ro.ref_logprobs, ro.response_mask, kl_coef,
                                      cfg.kl_estimator)  # (B, N)

        # ---------------------------------------------------------------- 4. GAE
        advantages, ro.returns = rl.compute_gae(ro.rewards, ro.values, ro.response_mask, cfg.gamma, cfg.lam)  # (B, N)
        ro.advantages = ops.masked_whiten(advantages, ro.response_mask)  # (B, N)

        # ---------------------------------------------------------------- 5. OPTIMISE
        policy.train()
        lr = cfg.lr * (1 - it / cfg.iterations) if cfg.anneal_lr else cfg.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats: dict[str, list] = {}  # per minibatch: this rank's part, weighted by its share (summed over ranks below)
        ratio_max: list = []
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(cfg.batch_size, generator=torch.Generator().manual_seed(cfg.seed + it * 1000 + epoch))
            for start in range(0, cfg.batch_size, cfg.minibatch_size):
                rows = perm[start:start + cfg.minibatch_size]  # the minibatch (the same on every rank)
                mb = rows[rank * len(rows) // world:(rank + 1) * len(rows) // world].to(device)  # this rank's part
                # the losses are means over the minibatch's response tokens: this part weighs its share of them
                share = ro.response_mask[mb].sum() / ro.response_mask[rows.to(device)].sum()
                m = ro.minibatch(mb)  # (b, ...)
                with autocast(device, cfg.dtype):
                    new_logits, new_values = actor_critic(m.tokens, m.attention_mask, P)  # (b, N, V), (b, N)
                new_values = new_values.float()  # (b, N)
                new_logprobs = ops.logprobs_from_logits(new_logits, m.response, cfg.temperature)  # (b, N), float32
                pg_loss, pg = ppo_policy_loss(new_logprobs, m.logprobs, m.advantages, m.response_mask, cfg.cliprange)
                vf_loss, vf = ppo_value_loss(new_values, m.values, m.returns, m.response_mask,
                                             cfg.cliprange_value if cfg.cliprange_value > 0 else None)
                loss = (pg_loss + cfg.vf_coef * vf_loss) * share
                if cfg.ptx_coef > 0:  # PPO-ptx: keep the pretraining distribution's likelihood up
                    ptx_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it * 1_009 + epoch * 101 + start)
                    px, py = get_batch(ptx_data, ptx_batch, policy.config.block_size, ptx_gen, "cpu")  # every rank alike
                    a, b = rank * ptx_batch // world, (rank + 1) * ptx_batch // world  # this rank's windows
                    with autocast(device, cfg.dtype):  # (none when there are fewer windows than processes)
                        ptx_loss = (lm_loss(policy, px[a:b].to(device), py[a:b].to(device)) if b > a
                                    else loss.new_zeros(()))
                    loss = loss + cfg.ptx_coef * ptx_loss * ((b - a) / ptx_batch)
                    stats.setdefault("ptx_loss", []).append(ptx_loss.detach() * ((b - a) / ptx_batch))
                optimizer.zero_grad(set_to_none=True)
                (loss * world).backward()  # DDP averages the ranks' gradients: * world makes it their sum
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                for k, v in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("policy/clipfrac", pg["clipfrac"]),
                             ("policy/approx_kl", pg["approx_kl"]), ("policy/ratio_mean", pg["ratio_mean"]),
                             ("value/clipfrac", vf["clipfrac"])):
                    stats.setdefault(k, []).append(v.detach() * share)
                ratio_max.append(pg["ratio_max"])
        stats = dist.sum_parts(stats)  # the minibatch means over every rank's part: one all-reduce per iteration
        stats["policy/ratio_max"] = list(dist.all_reduce_max(torch.stack(ratio_max).float()))
        # stats hold one value per optimizer step, in order: this iteration's first step is it * steps + 1
        check_finite({k: v for k, v in stats.items() if k.endswith("_loss")}, f"{STAGE} (iteration {it + 1})",
                     it * steps_per_iteration + 1, ckpt_path if os.path.exists(ckpt_path) else "")

        # ---------------------------------------------------------------- 6. LOG
        seq_kl = ops.masked_sum(ops.kl_k1(ro.logprobs, ro.ref_logprobs), ro.response_mask, dim=1)  # (B,)
        seq_kl3 = ops.masked_sum(ops.kl_k3(ro.logprobs, ro.ref_logprobs), ro.response_mask, dim=1)  # (B,)
        non_score = ops.masked_sum(-kl_coef * ops.kl_k1(ro.logprobs, ro.ref_logprobs), ro.response_mask, dim=1) if \
            cfg.kl_estimator == "k1" else -kl_coef * seq_kl3
        kl_ctl.update(seq_kl.mean().item(), cfg.batch_size)
        row = {"iteration": it + 1, "kl_coef": kl_coef, "lr": lr,
               "objective/kl": seq_kl.mean().item(), "objective/kl_k3": seq_kl3.mean().item(),
               "objective/entropy": entropy.item(), "objective/scores": ro.scores.mean().item(),
               "objective/non_score_reward": non_score.mean().item(),
               "objective/rlhf_reward": (ro.scores + non_score).mean().item(),
               "value/explained_variance": explained_variance(ro.values, ro.returns, ro.response_mask).item(),
               "response/length": ro.response_mask.sum(1).mean().item(),
               "response/eos_rate": ended.float().mean().item(),
               "policy/ratio_max": torch.stack(stats.pop("policy/ratio_max")).max().item(),
               **{k: torch.stack(v).mean().item() for k, v in stats.items()},
               "seconds": round(watch.seconds(), 2)}
        done = it + 1  # iterations finished
        evaluate_now = done % cfg.eval_interval == 0 or done == cfg.iterations
        if evaluate_fn is not None and evaluate_now:
            last_eval = evaluate_fn(policy, done)  # every rank samples its share of the prompts; rank 0 writes
            row.update({f"eval/{k}": v for k, v in last_eval.items() if isinstance(v, float)})
        log.log(row)
        bar.set_postfix(score=f"{row['objective/scores']:.2f}", kl=f"{row['objective/kl']:.2f}")

        # ---------------------------------------------------------------- 7. CHECKPOINT (rank 0; the others wait)
        if evaluate_now or done == cfg.stop_after:
            if main:
                save_rl_checkpoint(ckpt_path, cfg, inputs, {"policy": policy, "value": value_model}, optimizer, order,
                                   done, row, last_eval, kl_coef=kl_ctl.value)
            dist.barrier()
        if done == cfg.stop_after and done < cfg.iterations:
            dist.print0(f"[{STAGE}] stopped after iteration {done} (--stop_after); continue with --resume")
            break
    bar.close()
    trained = done - start_it  # iterations run in this call
    return {"iterations": done, "interrupted": done < cfg.iterations, "trained_iterations": trained,
            "seconds": watch.seconds(), "last_eval": last_eval,
            "rollout_tokens_per_second": rollout_tokens / max(rollout_seconds, 1e-9),
            "iterations_per_second": trained / max(watch.seconds(), 1e-9), "last_row": row}


def run(cfg: PPOConfig) -> dict:
    """`minirlhf ppo`: PPO from the SFT model against the reward model or (--reward=gold) the gold judge.

    Reads the initial policy, also the frozen reference (--init, default out/<preset>/sft/model.pt), the reward
    model (--reward_model, default out/<preset>/reward/model.pt; loaded with --reward=gold too, for the evaluation's
    proxy column), the value model's init (--value_init, default the reward model; none with --value_model=shared),
    the prompts (--prompts, default the world's rl_prompts.jsonl; those that leave fewer than 8 tokens of the
    context are left out, counted in the summary's `prompts_left_out`, an error if none is left) and, with
    --ptx_coef > 0, out/<preset>/pretrain/train.bin. Writes under out/<preset>/ppo/ (ppo_gold with the gold judge,
    or --run_name) tokenizer.json, config.json, metrics.jsonl, samples.jsonl, eval_samples.jsonl (a few held-out
    samples of every evaluation), ckpt.pt, model.pt and summary.json, and returns the summary (the prompts used and
    left out, the last evaluation, speeds, `final_kl_coef` = the KL coefficient the last iteration shaped its
    rewards with, as in its metrics row: the controller's update after it would serve only a next iteration,
    `seconds`); on every rank under torchrun. A finished run with the same config, inputs and code is reused (not with
    --force or --resume); --stop_after before the end returns {"stage", "iterations", "interrupted": True} without
    model.pt or summary. ValueError for a bad --reward or --value_model.
    """
    from minirlhf.evaluate import judge_inputs, load_judge
    from minirlhf.world import judge

    fill_from_preset(cfg)
    if cfg.reward not in ("rm", "gold"):
        raise ValueError(f"--reward={cfg.reward!r}: expected 'rm' (the reward model) or 'gold' (the gold judge)")
    out = stage_dir(cfg, cfg.run_name or (STAGE if cfg.reward == "rm" else f"{STAGE}_gold"))
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()
    init = cfg.init or stage_file(cfg, "sft", "model.pt")
    rm_path = cfg.reward_model or stage_file(cfg, "reward", "model.pt")
    prompts_path = cfg.prompts or world_file(cfg, "rl_prompts.jsonl", "--prompts")
    inputs = {**{n: file_digest(p) for n, p in (("init", init), ("rm", rm_path), ("prompts", prompts_path))},
              **judge_inputs(cfg)}
    if cfg.ptx_coef > 0:  # PPO-ptx reads the pretraining tokens, so they are an input too
        inputs["ptx"] = file_digest(stage_file(cfg, "pretrain", "train.bin"))
    key = config_key(cfg, inputs, __name__)  # __name__: its code (and what it imports) is part of the key
    if (summary := reusable(out, key, cfg.force, resume=cfg.resume)) is not None:
        dist.print0(f"[ppo] reusing {out}/model.pt (same config, inputs and code; --force to retrain)")
        return summary
    tok = tokenizer_of(init)
    check_same_tokenizer(init, rm_path, "--reward_model")
    if cfg.value_init:
        check_same_tokenizer(init, cfg.value_init, "--value_init")
    torch.manual_seed(cfg.seed)
    policy, _ = ck.load_model(init, device)  # dropout off in every RL stage
    ref, _ = ck.load_model(init, device)
    reward_model, _ = ck.load_scalar_model(rm_path, device)
    reward_model.eval().requires_grad_(False)
    if cfg.value_model == "separate":
        value_model, _ = ck.load_scalar_model(cfg.value_init or rm_path, device)  # InstructGPT: value from the RM
        value_model.requires_grad_(True)
    elif cfg.value_model == "shared":
        value_model = ScalarHead(policy.config.n_embd).to(device)  # reads the policy's hidden states
        torch.nn.init.zeros_(value_model.linear.weight)
    else:
        raise ValueError(f"--value_model={cfg.value_model!r}: expected 'separate' or 'shared'")
    ptx_data = load_tokens(stage_file(cfg, "pretrain", "train.bin"), policy.config.vocab_size) \
        if cfg.ptx_coef > 0 else None
    rendered = [(p, render_prompt(tok, p)) for p in read_prompts(prompts_path)]
    # prompts that leave fewer than 8 tokens of the context for a response are left out, and counted
    rows = [(p, ids) for p, ids in rendered if len(ids) + 8 <= policy.config.block_size]
    left_out = len(rendered) - len(rows)
    if not rows:
        raise ValueError(f"{prompts_path}: every prompt leaves fewer than 8 tokens of the "
                         f"{policy.config.block_size}-token context for a response")
    if left_out:
        dist.print0(f"[ppo] left out {left_out} of {len(rendered)} prompts too long for the context")
    if len(rows) < cfg.batch_size:  # each rollout batch draws batch_size distinct prompts
        raise ValueError(f"{prompts_path}: {len(rows)} usable prompts ({left_out} left out as too long), fewer "
                         f"than --batch_size={cfg.batch_size} rollouts per iteration draw; lower --batch_size or "
                         "add prompts")
    prompts = [ids for _, ids in rows]
    # the reward: the reward model's score, or (--reward=gold) the gold judge on the decoded response
    # (the world's judge reads the last user turn; a user's judge gets the whole prompt, as in evaluation)
    judged = [judge_prompt(p) if cfg.gold_judge else prompt_text(p) for p, _ in rows]
    score_fn = reward_model.score if cfg.reward == "rm" else gold_score_fn(
        prompts, judged, tok, load_judge(cfg.gold_judge) or judge)
    samples_path = os.path.join(out, "eval_samples.jsonl")
    begin_writing(out, cfg, tokenizer_from=init)  # inputs read and checked: only now is `out` touched
    if dist.is_main():
        if not cfg.resume and os.path.exists(samples_path):
            os.remove(samples_path)  # a previous run's samples
    dist.print0(f"[ppo] {len(prompts)} prompts, reward {cfg.reward}, {cfg.iterations} iterations x {cfg.batch_size} "
                f"rollouts, init {init}")

    def evaluate_fn(model, iteration):
        metrics = world_eval(model, tok, cfg, out, reference=ref, reward_model=reward_model)
        # keep a few held-out samples of every evaluation (samples.jsonl holds only the latest one); rows of
        # this iteration or later, left by a run stopped before its next checkpoint, are replaced
        if dist.is_main() and os.path.exists(os.path.join(out, "samples.jsonl")):
            held = [r for _, r in read_jsonl(os.path.join(out, "samples.jsonl")) if r.get("split") == "eval"]
            kept = rows_up_to(samples_path, iteration - 1, "iteration")[0] + [{"iteration": iteration, **r}
                                                              for r in held[:cfg.samples_per_eval]]
            with open(samples_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        return metrics

    result = train_ppo(policy, ref, value_model, score_fn, prompts, tok, cfg, out, evaluate_fn, ptx_data, inputs)
    if result["interrupted"]:  # --stop_after: ckpt.pt is written; no model.pt or summary yet
        return {"stage": STAGE, "iterations": result["iterations"], "interrupted": True}
    if not dist.is_main():
        return dist.share()  # rank 0 alone writes the artifacts; its summary comes back
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(policy, STAGE, iterations=cfg.iterations))
    summary = {"stage": STAGE, "key": key, "reward": cfg.reward, "iterations": cfg.iterations,
               "prompts": len(prompts), "prompts_left_out": left_out,
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result["last_eval"].items()},
               "iterations_per_second": round(result["iterations_per_second"], 4),
               "rollout_tokens_per_second": round(result["rollout_tokens_per_second"], 1),
               "final_kl_coef": result["last_row"]["kl_coef"], "seconds": round(watch.seconds(), 2)}
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[ppo] {eval_headline(summary)}; {summary['seconds']:.0f} s")
    return dist.share(summary)
