"""GRPO: PPO's clipped objective with group-relative advantages instead of a value model.

Run it:
    minirlhf grpo --preset tiny                                   # against the reward model, all RL prompts
    minirlhf grpo --preset tiny --reward=gold --prompts=arithmetic   # verifiable rewards: the gold judge on sums
    minirlhf grpo --preset tiny --scale_rewards=false --beta=0    # Dr. GRPO-style: mean-only, no KL term

Each iteration (Shao et al. 2024, DeepSeekMath, §4.1 and Algorithm 1; by default one pass, ppo_epochs=1,
over each rollout batch in minibatches):
  1. ROLLOUT     pick `prompts_per_iteration` prompts and sample `group_size` (G) responses for each at
                 temperature T (KV-cache engine); the G responses of a prompt sit next to each other;
  2. REWARD      one number per response: the reward model's score (`--reward=rm`), or the gold judge on
                 the decoded prompt and response (`--reward=gold`, "verifiable rewards"); minus
                 `missing_eos_penalty` when the response never emitted <|end|>;
  3. LOG-PROBS   pi_old recomputed at the same temperature T, and the frozen reference (SFT) model's
                 log-probs for the KL term (skipped entirely when beta = 0);
  4. ADVANTAGES  A_i = (r_i - mean(r_group)) / (std(r_group) + eps), one number per response, given to
                 every one of its tokens (outcome supervision, §4.1.2); `--scale_rewards=false` keeps only
                 the centring (Dr. GRPO, Liu et al. 2025: the std division up-weights groups whose rewards
                 barely differ). A group whose G rewards are all equal has no learning signal: its
                 advantages are set to exactly 0 (the float mean of equal numbers is not always exact);
  5. OPTIMISE    ppo_epochs x shuffled minibatches of `losses.grpo_loss` (eq. 3: clipped ratio times the
                 sequence's advantage, plus beta * k3 per token (eq. 4), averaged over each sequence's
                 tokens, then over sequences), gradient clipping;
  6. LOG         the metrics below, every iteration, to metrics.jsonl; the evaluation harness
                 (`sft.world_eval`) every `eval_interval` iterations and after the last one;
  7. CHECKPOINT  ckpt.pt every `eval_interval` iterations, after the last and at `--stop_after`, for
                 `--resume`: the policy's weights, the optimizer state, the iteration, the state of the
                 prompt-order generator and the last row and evaluation. Rollouts and minibatch
                 permutations use generators seeded by (seed, iteration, ...) and dropout is off, so no
                 other RNG state is needed: a resumed run ends exactly where an uninterrupted one would
                 (on CPU). The rows of metrics.jsonl past the checkpoint's iteration are dropped and
                 written again.

Under torchrun (N processes; see distributed.py) it is the same algorithm on the same global batch, as
in ppo.py: the iteration's prompts are drawn identically on every rank; the batch is sampled in
`rollout_shards` shards of whole groups (default: one per process), shard s with its own generator seeded
by (seed, iteration, s), and rank r samples, rewards and scores (pi_old, reference) only its own shards.
The per-response results are then all-gathered, so the group advantages and every logged mean are
computed on the whole batch, identically on every rank. Each minibatch (the same permutation on every
rank) is split between the ranks; the loss is a mean over the minibatch's responses, so each rank
weighs its part by its share of them and DDP sums the gradients. Every rank samples its share of the
evaluation prompts and of the task-accuracy prompts (`evaluate.evaluate_policy`); rank 0 alone writes.
A one-process run with `--rollout_shards=N` samples exactly the same rollouts as N processes.

There is no value model: the group's mean reward is the baseline. That saves a second trunk and its
loss, and it is why GRPO needs several samples of the same prompt.

Logged metrics (one row per iteration):
  iteration                  1, 2, ... (the row's iteration)
  lr                         the learning rate of this iteration
  reward/mean, reward/std    mean and std of the rewards of this iteration's responses (after the EOS penalty)
  reward/zero_std_groups     share of groups whose G rewards are all equal: no learning signal from them
  objective/kl               mean over responses of the per-token mean k3 to the reference (what the loss
                             penalises). Only logged when beta > 0 (beta = 0 never runs the reference in
                             the loop; the evaluation harness still reports eval/kl_k1 to the SFT model)
  objective/kl_sum           the same summed over tokens (comparable to PPO's objective/kl_k3); beta > 0 only
  objective/entropy          mean per-token entropy of the policy on its own samples
  policy/loss                the GRPO loss, mean over minibatches
  policy/clipfrac            share of tokens where the clipped term is the smaller one (gradient zeroed)
  policy/ratio_mean, policy/ratio_max   the probability ratio pi / pi_old over real tokens (mean over the
                             minibatches, max)
  policy/approx_kl           mean k3 estimate of KL(pi_old || pi) from the samples of pi_old, over the
                             minibatches of every epoch
  response/length, response/eos_rate
  task/correct_rate          with --prompts=<category>: share of this iteration's responses the judge
                             calls correct ("answer" credited, nothing "wrong"; see evaluate._correct)
  seconds                    wall time since the loop (re)started
  eval/*                     at evaluations only: the evaluation harness's numbers (`sft.world_eval`)

A NaN or inf loss stops the run with an error naming the iteration and the optimizer step, counted from 1
over the whole run: each iteration takes ppo_epochs x ceil(B / minibatch_size) steps, with B =
prompts_per_iteration x group_size responses.

Outputs go to out/<preset>/grpo/ with the reward model, and to out/<preset>/grpo_gold/ with the gold
judge (so the two can be compared side by side; `--run_name` picks another folder): model.pt,
tokenizer.json, config.json, metrics.jsonl, samples.jsonl, summary.json, ckpt.pt (for --resume). With
`--prompts=<category>` (e.g. arithmetic) the summary also holds `task_eval`: accuracy and mean gold
reward of the initial (SFT) policy ("before") and the trained one ("after") on that category's prompts,
in three sets: `heldout` (eval_prompts.jsonl, split "eval": held-out entities or operands, the
generalisation test), `train_split` (eval_prompts.jsonl, split "train") and `rl_prompts` (the prompts
GRPO trains on); each with `task_eval_samples` samples per prompt at temperature T (`*_acc`, `*_n`
responses) and one greedy response per prompt (`*_greedy_acc`).

What you should see with `minirlhf grpo --preset tiny --reward=gold --prompts=arithmetic` (40 iterations
x 16 prompts x 8 responses, about one CPU-minute of training; measured on a 2-core CPU): sampled accuracy
on the training sums rises from 0.45 to 0.74, and on the 27 held-out sums from 0.32 to 0.43 (4 samples
each, so about +-0.08 of sampling noise); greedy accuracy on the held-out sums stays at 0.48 (GRPO mostly
sharpens the distribution towards answers the model already ranked first). The judge gives a wrong
number -0.6 but an answer without a number 0, so where the policy is unsure of a sum, not answering
scores better than guessing: the share of non-answers on held-out sums can grow. That is the gold
rubric being optimised as written (outcome rewards reward exactly what they check).

Precision (`--dtype`): as in PPO -- bf16 autocast for the forward passes on CUDA by default, float32 on
the CPU; log-probs, advantages and the loss in float32.

Deliberate simplifications: the rollout batch is optimised in memory; the reference model is not
refreshed (DeepSeekMath's iterative GRPO resets it to the policy); no dynamic sampling that replaces
zero-signal groups (DAPO, Yu et al. 2025); the KL is the per-token k3 in the loss, not in the reward;
`--scale_rewards=false` is only the first of Dr. GRPO's two fixes: the loss keeps eq. 3's 1/|o_i| average
over each response's tokens (`losses.grpo_loss`).
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
from minirlhf.common import (MetricsLog, Stopwatch, autocast, begin_writing, check_finite, check_same_tokenizer,
                             config_key, file_digest, make_adamw, resolve_device, reusable, setup_torch, write_json)
from minirlhf.config import GRPOConfig, fill_from_preset, stage_dir
from minirlhf.data import judge_prompt, prompt_text, read_prompts
from minirlhf.engine import generate_sharded, response_logprobs
from minirlhf.losses import grpo_loss
from minirlhf.ppo import resume_rl, save_rl_checkpoint
from minirlhf.sft import eval_headline, stage_file, tokenizer_of, world_eval, world_file

STAGE = "grpo"
REWARDS = ("rm", "gold")


# ----------------------------------------------------------------------------------------------------
# helpers


def check_config(cfg) -> None:
    """One clear error for a setting GRPO cannot run with (called after the preset fill-in)."""
    if cfg.reward not in REWARDS:
        raise ValueError(f"--reward={cfg.reward!r}: expected 'rm' (the reward model) or 'gold' (the gold judge)")
    if cfg.group_size < 2:
        raise ValueError(f"--group_size={cfg.group_size}: GRPO needs at least 2 responses per prompt "
                         "(the group mean is the baseline)")
    for name in ("iterations", "prompts_per_iteration", "minibatch_size", "ppo_epochs", "max_new_tokens",
                 "eval_interval"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.beta < 0:
        raise ValueError(f"--beta={cfg.beta}: the KL weight cannot be negative")
    if not 0 < cfg.epsilon < 1:
        raise ValueError(f"--epsilon={cfg.epsilon}: the clip range must be in (0, 1)")
    if cfg.temperature <= 0:
        raise ValueError(f"--temperature={cfg.temperature}: GRPO samples, so the temperature must be > 0")
    autocast(torch.device("cpu"), cfg.dtype)  # --dtype: auto, float32 or bfloat16, else its error


def group_advantages_with_signal(rewards, group_size: int, scale: bool = True):
    """`rl.group_advantages` and which groups had no signal -> (advantages (B,), zero_std (n,)).

    rewards: (B,) in consecutive groups of `group_size`. A group whose rewards are all equal carries no
    information about which response is better; `rl.group_advantages` gives it exactly zero advantages.
    zero_std: (B // group_size,) bool, True for such groups (logged as reward/zero_std_groups).
    """
    advantages = rl.group_advantages(rewards, group_size, scale=scale)  # (B,)
    r = rewards.view(-1, group_size)  # (n, G)
    return advantages, r.amax(dim=1) == r.amin(dim=1)  # (B,), (n,)


def decode_responses(tok, g) -> list[str]:
    """The decoded response of each row of a Generation, ending with "<|end|>" when the model emitted it."""
    texts = []
    for row, keep in zip(g.response.tolist(), g.response_mask.tolist()):
        texts.append(tok.decode([t for t, k in zip(row, keep) if k]))
    return texts


def load_prompt_rows(cfg) -> tuple[list[dict], str]:
    """The RL prompts named by `cfg.prompts` -> (rows with "prompt" and "category", source path).

    "" = every prompt of the world's rl_prompts.jsonl; a category name (arithmetic, fact, about, unsafe,
    harmless, chitchat) = only that category's prompts of that file; anything else = a JSONL file of
    {"prompt"} records (category unknown: None).
    """
    from minirlhf.world import CATEGORIES

    spec = cfg.prompts
    if spec == "" or spec in CATEGORIES:
        path = world_file(cfg, "rl_prompts.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: run `minirlhf world --preset {cfg.preset}` first")
        messages = read_prompts(path)  # validates every line
        with open(path) as f:
            raw = [json.loads(line) for line in f if line.strip()]
        rows = [{"prompt": m if isinstance(r["prompt"], list) else r["prompt"], "category": r.get("category")}
                for m, r in zip(messages, raw)]
        if spec:
            rows = [r for r in rows if r["category"] == spec]
            if not rows:
                raise ValueError(f"--prompts={spec}: {path} has no prompts of category {spec!r}")
        return rows, path
    if not os.path.isfile(spec):
        raise ValueError(f"--prompts={spec!r}: neither a JSONL file nor a prompt category "
                         f"({', '.join(CATEGORIES)})")
    return [{"prompt": p, "category": None} for p in read_prompts(spec)], spec


def gold_reward_fn(texts: list[str], tok, judge_fn):
    """reward_fn for verifiable rewards: judge(prompt text, decoded response) for each row -> (B,)."""

    def reward(g, prompt_index: list[int]):
        responses = decode_responses(tok, g)
        scores = [judge_fn(texts[i], r) for i, r in zip(prompt_index, responses)]
        return torch.tensor(scores, dtype=torch.float32, device=g.response.device)  # (B,)

    return reward


def task_eval(policy, tok, prompt_sets: dict[str, list[dict]], samples_per_prompt: int, temperature: float,
              max_new_tokens: int, seed: int, judge_fn=None) -> dict:
    """Accuracy and mean gold reward of `policy` on named sets of prompt rows ({"prompt", "category", "split"}).

    For each set `name`: `samples_per_prompt` sampled responses per prompt at `temperature` ->
    name_acc, name_gold, name_n (responses); one greedy response per prompt -> name_greedy_acc,
    name_greedy_gold; and name_prompts. A response is correct when the judge credits the answer and finds
    nothing wrong (`evaluate._correct`).
    """
    from minirlhf.evaluate import evaluate_policy

    out: dict = {}
    for name, rows in prompt_sets.items():
        if not rows:
            continue
        for mode, temp, k in (("", temperature, samples_per_prompt), ("greedy_", 0.0, 1)):
            _, samples = evaluate_policy(policy, tok, "", temperature=temp, max_new_tokens=max_new_tokens,
                                         seed=seed, judge_fn=judge_fn, rows=[r for r in rows for _ in range(k)],
                                         batch_size=256)
            out[f"{name}_{mode}acc"] = round(sum(x["correct"] for x in samples) / len(samples), 4)
            out[f"{name}_{mode}gold"] = round(sum(x["gold"] for x in samples) / len(samples), 4)
            out[f"{name}_{mode}n"] = len(samples)
        out[f"{name}_prompts"] = len(rows)
    return out


def task_prompt_sets(world_dir: str, category: str, train_rows: list[dict]) -> dict[str, list[dict]]:
    """The prompt sets `task_eval` measures for a category: eval_prompts.jsonl's held-out split ("heldout":
    held-out entities or operands), its training split ("train_split": training entities, other prompts),
    and the RL prompts the policy is trained on ("rl_prompts": in-distribution, for reference)."""
    from minirlhf.evaluate import read_rows

    rows = [r for r in read_rows(os.path.join(world_dir, "eval_prompts.jsonl")) if r["category"] == category]
    return {"heldout": [r for r in rows if r["split"] == "eval"],
            "train_split": [r for r in rows if r["split"] == "train"],
            "rl_prompts": [{"prompt": r["prompt"], "category": category, "split": "train"} for r in train_rows]}


# ----------------------------------------------------------------------------------------------------
# the loop


def train_grpo(policy, ref, reward_fn, prompts: list[list[int]], tok, cfg, out: str, evaluate_fn=None,
               correct_fn=None, inputs: dict | None = None) -> dict:
    """The GRPO loop. reward_fn(g: engine.Generation, prompt_index: list[int]) -> (b,) rewards.

    prompts: token-id lists (rendered chat prompts); row b of the rollout answers prompts[prompt_index[b]].
    ref: the frozen reference model (may be None when cfg.beta == 0: it is then never called).
    correct_fn(g, prompt_index) -> list[bool], optional: logged as task/correct_rate.
    Under torchrun each rank samples, rewards and scores its own shards of the rollout batch; see the
    module docstring. With cfg.resume, continues from `out`/ckpt.pt, which must come from the same settings
    and `inputs` (the input digests it records); without, an old ckpt.pt there is removed first.
    cfg.stop_after = k stops after iteration k as if interrupted. Returns {"iterations" (done),
    "interrupted", "trained_iterations" (in this call), "seconds", "last_eval", "last_row", ...}.
    """
    check_config(cfg)
    device = policy.lm_head.weight.device
    G = cfg.group_size
    B = cfg.prompts_per_iteration * G
    if cfg.prompts_per_iteration > len(prompts):
        raise ValueError(f"--prompts_per_iteration={cfg.prompts_per_iteration} but only {len(prompts)} prompts")
    world, rank, main = dist.world_size(), dist.rank(), dist.is_main()
    shards = cfg.rollout_shards or world  # the rollout batch is sampled in this many seeded shards of whole groups
    if shards % world or cfg.prompts_per_iteration % shards:
        raise ValueError(f"--rollout_shards={shards} must be a multiple of the number of processes ({world}) "
                         f"and divide --prompts_per_iteration={cfg.prompts_per_iteration}")
    if world > 1 and (cfg.minibatch_size % world or B % cfg.minibatch_size):
        raise ValueError(f"with {world} processes --minibatch_size={cfg.minibatch_size} must be divisible by "
                         f"{world} and divide the {B} responses of an iteration")
    use_ref = cfg.beta != 0.0
    if use_ref:
        if ref is None:
            raise ValueError("grpo: beta > 0 needs a reference model")
        ref.eval().requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_adamw(policy.optimizer_groups(0.0), cfg.lr, (0.9, 0.95), device)
    order = random.Random(cfg.seed)  # the prompt order: the one random state carried from iteration to iteration
    ckpt_path, metrics_path = os.path.join(out, "ckpt.pt"), os.path.join(out, "metrics.jsonl")
    start_it, row, last_eval = 0, {}, {}
    if cfg.resume:
        state = resume_rl(STAGE, ckpt_path, cfg, inputs, {"policy": policy}, optimizer, order)
        start_it, row, last_eval = state["iteration"], state["last_row"], state["last_eval"]
    elif main and os.path.exists(ckpt_path):
        os.remove(ckpt_path)  # an earlier run's: a later --resume must not find it
    ddp_policy = dist.data_parallel(policy)  # DDP with several processes; the policy itself in one
    steps_per_iteration = cfg.ppo_epochs * len(range(0, B, cfg.minibatch_size))  # optimizer steps
    # a new file; resuming, the rows up to the checkpoint stay
    log = MetricsLog(metrics_path, start_it if cfg.resume else None, enabled=main, key="iteration")
    watch = Stopwatch()
    rollout_tokens, rollout_seconds, done = 0, 0.0, start_it
    bar = tqdm(range(start_it, cfg.iterations), initial=start_it, total=cfg.iterations,
               disable=not (cfg.progress and main), desc=STAGE, ncols=100)
    for it in bar:
        # ---------------------------------------------------------------- 1. ROLLOUT (no grad)
        t0 = Stopwatch()
        chosen = order.sample(range(len(prompts)), cfg.prompts_per_iteration)  # the same on every rank
        prompt_index = [i for i in chosen for _ in range(G)]  # each prompt G times, side by side
        batch = [prompts[i] for i in prompt_index]
        # this rank's shards (whole groups: shard size = B / rollout_shards), at the global width
        with autocast(device, cfg.dtype):  # bf16 on CUDA by default; log-probs are taken in float32 throughout
            g, mine = generate_sharded(policy, batch, shards, cfg.seed * 1_000_003 + it, cfg.max_new_tokens,
                                       tok.end_id, tok.pad_id, cfg.temperature)
        local_index = prompt_index[mine]  # the prompt of each of this rank's rows
        tokens, attn, P = g.tokens, g.attention_mask, g.prompt.size(1)  # (b, P + N) each
        rollout_seconds += t0.seconds()

        # ---------------------------------------------------------------- 2. REWARD (no grad)
        with torch.no_grad():
            ended = g.ended(tok.end_id)  # (b,)
            rewards = reward_fn(g, local_index).to(device).float()  # (b,)
            rewards = rewards - cfg.missing_eos_penalty * (~ended).float()  # (b,)
            correct = (torch.tensor(correct_fn(g, local_index), dtype=torch.float32, device=device)
                       if correct_fn is not None else torch.zeros(len(local_index), device=device))  # (b,)

        # ---------------------------------------------------------------- 3. LOG-PROBS: pi_old and reference (no grad)
        policy.eval()
        with torch.no_grad():
            with autocast(device, cfg.dtype):
                old_logprobs, entropy = response_logprobs(policy, tokens, attn, P, cfg.temperature,
                                                          return_entropy=True)  # (b, N), (b, N)
                ref_logprobs = (response_logprobs(ref, tokens, attn, P, cfg.temperature) if use_ref
                                else torch.zeros_like(old_logprobs))  # (b, N); unused when beta = 0
            # every rank's rows to every rank (rank order = shard order): from here on, the whole batch (B rows)
            tokens, attn, mask, ended, rewards, correct, old_logprobs, entropy, ref_logprobs = (
                dist.all_gather_rows(x) for x in (tokens, attn, g.response_mask.float(), ended.float(), rewards,
                                                  correct, old_logprobs, entropy, ref_logprobs))
            ended = ended.bool()  # (B,)
        rollout_tokens += int(mask.sum())

        # ---------------------------------------------------------------- 4. ADVANTAGES (the whole batch)
        advantages, zero_std = group_advantages_with_signal(rewards, G, cfg.scale_rewards)  # (B,), (B/G,)

        # ---------------------------------------------------------------- 5. OPTIMISE
        policy.train()
        lr = cfg.lr * (1 - it / cfg.iterations) if cfg.anneal_lr else cfg.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats: dict[str, list] = {}  # per minibatch: this rank's part, weighted by its share (summed over ranks below)
        ratio_max: list = []
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=torch.Generator().manual_seed(cfg.seed + it * 1000 + epoch))
            for start in range(0, B, cfg.minibatch_size):
                rows = perm[start:start + cfg.minibatch_size]  # the minibatch (the same on every rank)
                mb = rows[rank * len(rows) // world:(rank + 1) * len(rows) // world].to(device)  # this rank's part
                mb_mask = mask[mb]  # (b, N)
                # the loss is a mean over the minibatch's responses; the token metrics are means over its tokens
                seq_share, tok_share = len(mb) / len(rows), mb_mask.sum() / mask[rows.to(device)].sum()
                with autocast(device, cfg.dtype):
                    new_logprobs = response_logprobs(ddp_policy, tokens[mb], attn[mb], P, cfg.temperature)  # (b, N)
                old = old_logprobs[mb]  # (b, N)
                # beta = 0: no reference; grpo_loss then ignores ref_logprobs (its kl metric is not logged)
                loss, m = grpo_loss(new_logprobs, old, ref_logprobs[mb] if use_ref else old, advantages[mb],
                                    mb_mask, epsilon=cfg.epsilon, beta=cfg.beta)
                optimizer.zero_grad(set_to_none=True)
                (loss * seq_share * world).backward()  # DDP averages the ranks' gradients: * world makes it their sum
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                with torch.no_grad():
                    ratio = torch.exp(new_logprobs - old)  # (b, N)
                    for k, v, w in (("policy/loss", loss, seq_share), ("policy/clipfrac", m["clipfrac"], tok_share),
                                    ("policy/ratio_mean", ops.masked_mean(ratio, mb_mask), tok_share),
                                    # k3 of KL(pi_old || pi): the samples come from pi_old
                                    ("policy/approx_kl", ops.masked_mean(ops.kl_k3(old, new_logprobs), mb_mask),
                                     tok_share)):
                        stats.setdefault(k, []).append(v.detach() * w)
                    ratio_max.append(ops.select(ratio, mb_mask).max())  # pads 0, whatever their ratio
        stats = dist.sum_parts(stats)  # the minibatch means over every rank's part: one all-reduce per iteration
        # one loss per optimizer step, in order: this iteration's first step is it * steps + 1
        check_finite({"policy/loss": stats["policy/loss"]}, f"{STAGE} (iteration {it + 1})",
                     it * steps_per_iteration + 1, ckpt_path if os.path.exists(ckpt_path) else "")

        # ---------------------------------------------------------------- 6. LOG (global numbers, the same on every rank)
        row = {"iteration": it + 1, "lr": lr,
               "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
               "reward/zero_std_groups": zero_std.float().mean().item(),
               "objective/entropy": ops.masked_mean(entropy, mask).item(),
               "response/length": mask.sum(1).mean().item(),
               "response/eos_rate": ended.float().mean().item(),
               "policy/ratio_max": dist.all_reduce_max(torch.stack(ratio_max).max()).item(),
               **{k: torch.stack(v).mean().item() for k, v in stats.items()}}
        if use_ref:
            k3 = ops.kl_k3(old_logprobs, ref_logprobs)  # (B, N)
            row["objective/kl"] = ops.masked_mean(k3, mask, dim=1).mean().item()
            row["objective/kl_sum"] = ops.masked_sum(k3, mask, dim=1).mean().item()
        if correct_fn is not None:
            row["task/correct_rate"] = correct.mean().item()
        row["seconds"] = round(watch.seconds(), 2)
        done = it + 1  # iterations finished
        evaluate_now = done % cfg.eval_interval == 0 or done == cfg.iterations
        if evaluate_fn is not None and evaluate_now:
            last_eval = evaluate_fn(policy)  # every rank samples its share of the prompts; rank 0 writes samples
            row.update({f"eval/{k}": v for k, v in last_eval.items() if isinstance(v, float)})
        log.log(row)
        bar.set_postfix(reward=f"{row['reward/mean']:.2f}", zero=f"{row['reward/zero_std_groups']:.2f}")

        # ---------------------------------------------------------------- 7. CHECKPOINT (rank 0; the others wait)
        if evaluate_now or done == cfg.stop_after:
            if main:
                save_rl_checkpoint(ckpt_path, cfg, inputs, {"policy": policy}, optimizer, order, done, row, last_eval)
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


# ----------------------------------------------------------------------------------------------------
# the stage


def run(cfg: GRPOConfig) -> dict:
    """`minirlhf grpo`: GRPO from the SFT model against the reward model or (--reward=gold) the gold judge.

    Reads the initial policy, also the frozen reference (--init, default out/<preset>/sft/model.pt), the reward
    model (--reward_model, default out/<preset>/reward/model.pt: required with --reward=rm, only the proxy column of
    the evaluation with --reward=gold, when it exists) and the prompts (--prompts, `load_prompt_rows`); prompts that
    leave fewer than 8 tokens of the context are left out and counted. Writes under out/<preset>/grpo/ (grpo_gold with
    the gold judge, or --run_name) tokenizer.json, config.json, metrics.jsonl, samples.jsonl, ckpt.pt, model.pt and
    summary.json, and returns the summary (the last evaluation, the final mean reward, speeds, times, and with
    --prompts=<category> `task_eval` before and after); on every rank under torchrun. A finished run with the same
    config and inputs is reused (not with --force or --resume); --stop_after before the end returns {"stage",
    "iterations", "interrupted": True} without model.pt or summary.
    """
    from minirlhf.evaluate import _correct, judge_inputs, load_judge
    from minirlhf.world import CATEGORIES, judge, judge_terms

    fill_from_preset(cfg)
    check_config(cfg)
    judge_fn = load_judge(cfg.gold_judge) or judge
    init = cfg.init or stage_file(cfg, "sft", "model.pt")
    default_rm = os.path.join(cfg.out_dir, cfg.preset, "reward", "model.pt")
    if cfg.reward == "rm":
        rm_path = cfg.reward_model or stage_file(cfg, "reward", "model.pt")
    else:  # the gold judge trains; a reward model, if there is one, only adds the proxy column to the evaluation
        rm_path = cfg.reward_model or (default_rm if os.path.exists(default_rm) else "")
    rows, prompts_path = load_prompt_rows(cfg)
    out = stage_dir(cfg, cfg.run_name or (STAGE if cfg.reward == "rm" else f"{STAGE}_gold"))
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()
    inputs = {"init": file_digest(init), "prompts": file_digest(prompts_path), **judge_inputs(cfg)}
    if rm_path:
        inputs["rm"] = file_digest(rm_path)
    key = config_key(cfg, inputs, __name__)  # __name__: its code (and what it imports) is part of the key
    if (summary := reusable(out, key, cfg.force, resume=cfg.resume)) is not None:
        dist.print0(f"[grpo] reusing {out}/model.pt (same config, inputs and code; --force to retrain)")
        return summary
    tok = tokenizer_of(init)
    if rm_path:
        check_same_tokenizer(init, rm_path, "--reward_model")
    torch.manual_seed(cfg.seed)
    policy, _ = ck.load_model(init, device)  # dropout off in every RL stage
    ref, _ = ck.load_model(init, device)
    ref.eval().requires_grad_(False)
    reward_model = None
    if rm_path:
        reward_model, _ = ck.load_scalar_model(rm_path, device)
        reward_model.eval().requires_grad_(False)

    # prompts: rendered, and those too long for the context left out (counted)
    kept = [(r, render_prompt(tok, r["prompt"])) for r in rows]
    kept = [(r, ids) for r, ids in kept if len(ids) + 8 <= policy.config.block_size]
    if len(kept) < len(rows):
        dist.print0(f"[grpo] left out {len(rows) - len(kept)} prompts too long for the context")
    texts = [prompt_text(r["prompt"]) for r, _ in kept]
    prompts = [ids for _, ids in kept]

    if cfg.reward == "rm":
        def reward_fn(g, prompt_index):
            return reward_model.score(g.tokens, g.attention_mask)  # (B,)
    else:
        # the world's judge reads the last user turn; a user's judge gets the whole prompt, as in evaluation
        reward_fn = gold_reward_fn([judge_prompt(r["prompt"]) for r, _ in kept] if cfg.gold_judge else texts,
                                   tok, judge_fn)

    def correct_fn(g, prompt_index):
        return [_correct(judge_terms(texts[i], r)) for i, r in zip(prompt_index, decode_responses(tok, g))]

    def evaluate_fn(model):
        return world_eval(model, tok, cfg, out, reference=ref, reward_model=reward_model)

    begin_writing(out, cfg, tokenizer_from=init)  # inputs read and checked: only now is `out` touched
    world_dir = os.path.join(cfg.out_dir, cfg.preset, "world")
    category = cfg.prompts if cfg.prompts in CATEGORIES else ""
    have_world = os.path.exists(os.path.join(world_dir, "eval_prompts.jsonl"))

    prompt_sets = task_prompt_sets(world_dir, category, [r for r, _ in kept]) if category and have_world else {}

    def task_eval_fn(model):
        return task_eval(model, tok, prompt_sets, cfg.task_eval_samples, cfg.temperature, cfg.max_new_tokens,
                         cfg.seed, load_judge(cfg.gold_judge))

    before = task_eval_fn(policy) if prompt_sets else {}  # every rank samples its share (evaluate_policy)
    dist.print0(f"[grpo] {len(prompts)} prompts ({cfg.prompts or 'all'}), reward {cfg.reward}, {cfg.iterations} "
          f"iterations x {cfg.prompts_per_iteration} prompts x {cfg.group_size} responses, init {init}")

    result = train_grpo(policy, ref, reward_fn, prompts, tok, cfg, out, evaluate_fn,
                        correct_fn if category else None, inputs)
    if result["interrupted"]:  # --stop_after: ckpt.pt is written; no model.pt or summary yet
        return {"stage": STAGE, "iterations": result["iterations"], "interrupted": True}
    after = task_eval_fn(policy) if prompt_sets else {}
    if not dist.is_main():
        return dist.share()  # rank 0 alone writes the artifacts; its summary comes back
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(policy, STAGE, iterations=cfg.iterations))
    summary = {"stage": STAGE, "key": key, "reward": cfg.reward, "prompts": cfg.prompts or "all",
               "iterations": cfg.iterations,
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result["last_eval"].items()},
               "final_reward_mean": round(result["last_row"]["reward/mean"], 4),
               "iterations_per_second": round(result["iterations_per_second"], 4),
               "rollout_tokens_per_second": round(result["rollout_tokens_per_second"], 1),
               "train_seconds": round(result["seconds"], 2)}
    if before:
        summary["task_eval"] = {"category": category, "samples_per_prompt": cfg.task_eval_samples,
                                "temperature": cfg.temperature, "before": before, "after": after}
    summary["seconds"] = round(watch.seconds(), 2)
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[grpo] {eval_headline(summary)}; {summary['seconds']:.0f} s")
    if before:
        b, a = summary["task_eval"]["before"], summary["task_eval"]["after"]
        for name in ("heldout", "train_split", "rl_prompts"):
            if f"{name}_acc" in a:
                print(f"[grpo] {category} accuracy, {name} ({a[f'{name}_prompts']} prompts): sampled "
                      f"{b[f'{name}_acc']} -> {a[f'{name}_acc']} ({a[f'{name}_n']} responses), greedy "
                      f"{b[f'{name}_greedy_acc']} -> {a[f'{name}_greedy_acc']}")
    return dist.share(summary)
