"""Best-of-n sampling: the training-free reference point for reward against KL (n samples, keep the RM's favourite).

Run it:
    minirlhf best-of-n --preset tiny                     # n = 1, 2, 4, 8, 16 on the held-out prompts
    minirlhf best-of-n --preset tiny --ns=1,4,32 --temperature=0.8

For every held-out evaluation prompt (the `split == "eval"` rows of `evaluate.eval_prompt_rows`, the
same prompts as the `gold` of PPO, DPO and GRPO) we sample N = max(ns) responses from the SFT model and
score each with the reward model and the gold judge. For each n the policy "best-of-n" answers with one
of the first n samples (so every n uses a prefix of one pool: the rows are nested, and cheaper to
compute, than with a fresh pool per n): the one with the highest reward-model score minus
`missing_eos_penalty` if it has no <|end|> (the penalty PPO subtracts from its scores). One row per n in
out/<preset>/best_of_n/summary.json:

  n             samples per prompt
  gold          mean gold reward of the chosen responses (held-out prompts)
  proxy         mean reward-model score of the chosen responses, without the penalty (the selection
                maximises score - penalty: the two differ by the penalty times the share of chosen
                responses without <|end|>)
  gold_oracle   mean gold reward of the best response by the gold judge itself (the ceiling of selection)
  kl_analytic   log n - (n - 1) / n nats: an upper bound on the KL to the sampling policy (below)

and `rm_pairwise_gold_accuracy`: over every pair of one prompt's N samples with different gold scores,
how often the reward model orders them as the gold judge does (0.5 = chance; selection can only gain
gold where this is well above 0.5; None when no such pair was drawn).

The KL of best-of-n to the sampling policy is the analytic formula quoted by Stiennon et al. 2020
(summarisation from human feedback) and used by Gao et al. 2023 ("Scaling Laws for Reward Model
Overoptimization") to put best-of-n on the reward-vs-KL plane next to RL; Rafailov et al. 2023 (DPO) use
best-of-N sampling as the baseline DPO should match. It is exact only when the n samples are all
different; with repeated responses (a peaked policy, short answers) the true KL is smaller, so read it as
an upper bound (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy",
Theorem 3.1). It is in nats per response, the unit of PPO's `kl_k1`, and it is the KL to the policy
sampled: with `--temperature` T != 1 that is the SFT model at T, not the SFT model itself (the reference
of every other method's KL), so the frontier runs best-of-n at T = 1.

samples.jsonl holds every sampled response with its proxy (reward-model score, no penalty) and gold
scores, in pool order.

What you should see on tiny (168 held-out prompts, n up to 16; 15 s on the 2-core CPU): the proxy of the
chosen response climbs with n (-0.50 at n = 1 to +0.33 at n = 16) while its gold falls (0.23 to -0.01):
the reward model orders 0.49 of the pairs of samples correctly, i.e. it is at chance on the policy's own
samples of held-out prompts, so selecting harder against it only selects its biases -- over-optimisation
without any training. The oracle column (0.77 at n = 16) shows what the same samples could give.

Deliberate simplifications: one pool of N samples per prompt (nested prefixes, not independent draws per
n); the analytic KL instead of an estimate from samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from minirlhf import checkpoint as ck
from minirlhf.chat import render_prompt
from minirlhf.common import (Stopwatch, begin_writing, check_same_tokenizer, config_key, file_digest, resolve_device,
                             reusable, setup_torch, write_json)
from minirlhf.config import BestOfNConfig, fill_from_preset, stage_dir
from minirlhf.engine import generate
from minirlhf.grpo import decode_responses
from minirlhf.reward import pairwise_gold_accuracy
from minirlhf.sft import stage_file, tokenizer_of, world_file

STAGE = "best_of_n"


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats (exact for distinct samples; see the module docstring)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def parse_ns(spec: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4] (sorted, distinct); a clear error for anything else."""
    try:
        ns = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--ns={spec!r}: expected comma-separated positive integers, e.g. 1,2,4,8,16") from None
    if not ns or ns[0] < 1:
        raise ValueError(f"--ns={spec!r}: expected comma-separated positive integers, e.g. 1,2,4,8,16")
    return ns


@dataclass
class BestOfN:
    """n samples per prompt, scored: prompt i's samples are rows i of every field."""

    texts: list[list[str]]  # [prompts][n] decoded responses ("<|end|>" included when emitted)
    proxy: torch.Tensor  # (prompts, n) reward-model scores (without the missing-EOS penalty)
    ended: torch.Tensor  # (prompts, n) bool: the response emitted <|end|>
    best: torch.Tensor  # (prompts,) index of the chosen response: argmax of proxy - penalty * (not ended)

    @property
    def best_texts(self) -> list[str]:
        """The chosen response of each prompt, texts[i][best[i]]: one string per prompt."""
        return [row[i] for row, i in zip(self.texts, self.best.tolist())]


@torch.no_grad()
def best_of_n_responses(policy, rm, tok, prompts: list[list[int]], n: int, temperature: float = 1.0,
                        max_new_tokens: int = 48, seed: int = 0, batch_size: int = 64,
                        missing_eos_penalty: float = 0.0) -> BestOfN:
    """Sample n responses per prompt (token-id lists) and pick the reward model's favourite of each.

    The rows of a batch are the prompts each repeated n times side by side, max(1, batch_size // n) prompts
    per batch, sampled with one generator seeded `seed`: with n = 1 this is exactly plain sampling of the
    prompts in batches of `batch_size`. Ties go to the earliest sample.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    device = policy.lm_head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    per_batch = max(1, batch_size // n)
    texts, proxy, ended = [], [], []
    for start in range(0, len(prompts), per_batch):
        chunk = [p for p in prompts[start:start + per_batch] for _ in range(n)]  # each prompt n times
        budget = min(max_new_tokens, policy.config.block_size - max(len(p) for p in chunk))
        g = generate(policy, chunk, budget, tok.end_id, tok.pad_id, temperature=temperature, generator=gen)
        proxy.append(rm.score(g.tokens, g.attention_mask).float().view(-1, n))  # (b, n)
        ended.append(g.ended(tok.end_id).view(-1, n))  # (b, n)
        flat = decode_responses(tok, g)
        texts += [flat[i:i + n] for i in range(0, len(flat), n)]
    proxy, ended = torch.cat(proxy), torch.cat(ended)  # (prompts, n) each
    best = (proxy - missing_eos_penalty * (~ended).float()).argmax(dim=1)  # (prompts,) first maximum
    return BestOfN(texts, proxy, ended, best)


def best_of_n_table(proxy, gold, ended, ns: list[int], missing_eos_penalty: float = 0.0) -> list[dict]:
    """One row per n from a pool of N >= max(ns) scored samples per prompt: proxy, gold, ended (prompts, N).

    Best-of-n uses the first n samples of each prompt's pool. The three may live on different devices
    (the proxy scores on the models' GPU, the gold scores on the CPU): the table is computed on the CPU.
    """
    proxy, gold, ended = proxy.cpu(), gold.cpu(), ended.cpu()
    rows = []
    for n in ns:
        if n > proxy.size(1):
            raise ValueError(f"n = {n} but the pool has only {proxy.size(1)} samples per prompt")
        select = proxy[:, :n] - missing_eos_penalty * (~ended[:, :n]).float()  # (prompts, n)
        best = select.argmax(dim=1, keepdim=True)  # (prompts, 1)
        rows.append({"n": n, "gold": round(gold[:, :n].gather(1, best).mean().item(), 4),
                     "proxy": round(proxy[:, :n].gather(1, best).mean().item(), 4),
                     "gold_oracle": round(gold[:, :n].max(dim=1).values.mean().item(), 4),
                     "kl_analytic": round(kl_best_of_n(n), 4)})
    return rows


def run(cfg: BestOfNConfig) -> dict:
    """`minirlhf best-of-n`: sample max(ns) responses per held-out prompt, score them, tabulate each n.

    Reads the policy (--init, default out/<preset>/sft/model.pt), the reward model (--reward_model, default
    out/<preset>/reward/model.pt) and the "eval" rows of the world's eval_prompts.jsonl; every sample is scored by
    the reward model and the gold judge (--gold_judge, default the world's). Writes tokenizer.json, config.json,
    samples.jsonl and summary.json under out/<preset>/best_of_n/ and returns the summary: `rows` (one per n, see
    `best_of_n_table`), `rm_pairwise_gold_accuracy` and `rm_pairwise_pairs`, the counts, `seconds`. A summary made
    from the same config, inputs and code is returned as it is (--force resamples). ValueError for a bad --ns or a
    temperature <= 0; FileNotFoundError when an input is missing.
    """
    from minirlhf.data import write_jsonl
    from minirlhf.evaluate import eval_prompt_rows, judge_inputs, load_judge
    from minirlhf.world import judge

    fill_from_preset(cfg)
    ns = parse_ns(cfg.ns)
    if cfg.temperature <= 0:
        raise ValueError(f"--temperature={cfg.temperature}: best-of-n samples, so the temperature must be > 0")
    judge_fn = load_judge(cfg.gold_judge) or judge
    init = cfg.init or stage_file(cfg, "sft", "model.pt")
    rm_path = cfg.reward_model or stage_file(cfg, "reward", "model.pt")
    prompts_path = world_file(cfg, "eval_prompts.jsonl")
    if not os.path.exists(prompts_path):
        raise FileNotFoundError(f"{prompts_path} does not exist: run `minirlhf world --preset {cfg.preset}` first")
    out = stage_dir(cfg, STAGE)
    key = config_key(cfg, {"init": file_digest(init), "rm": file_digest(rm_path), "prompts": file_digest(prompts_path),
                           **judge_inputs(cfg)}, __name__)
    if (summary := reusable(out, key, cfg.force, artifacts=("summary.json",))) is not None:
        print(f"[best-of-n] reusing {out}/summary.json (same config, inputs and code; --force to resample)")
        return summary
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()
    tok = tokenizer_of(init)
    check_same_tokenizer(init, rm_path, "--reward_model")
    policy, _ = ck.load_model(init, device)
    rm, _ = ck.load_scalar_model(rm_path, device)
    policy.eval()
    rm.eval()
    begin_writing(out, cfg, tokenizer_from=init)  # inputs read and checked: only now is `out` touched

    rows = [r for r in eval_prompt_rows(os.path.dirname(prompts_path)) if r["split"] == "eval"]
    N = ns[-1]
    print(f"[best-of-n] {len(rows)} held-out prompts x {N} samples, n in {ns}, init {init}")
    pool = best_of_n_responses(policy, rm, tok, [render_prompt(tok, r["prompt"]) for r in rows], N,
                               cfg.temperature, cfg.max_new_tokens, cfg.seed, cfg.batch_size, cfg.missing_eos_penalty)
    gold = torch.tensor([[judge_fn(r["prompt"], t) for t in texts]
                         for r, texts in zip(rows, pool.texts)])  # (prompts, N)
    table = best_of_n_table(pool.proxy, gold, pool.ended, ns, cfg.missing_eos_penalty)
    write_jsonl(os.path.join(out, "samples.jsonl"),
                [{**r, "responses": texts, "proxy": [round(x, 4) for x in p], "gold": [round(x, 4) for x in g_]}
                 for r, texts, p, g_ in zip(rows, pool.texts, pool.proxy.tolist(), gold.tolist())])
    hits, pairs = pairwise_gold_accuracy(pool.proxy.tolist(), gold.tolist())  # why selection helps or hurts
    summary = {"stage": STAGE, "key": key, "prompts": len(rows), "samples_per_prompt": N,
               "temperature": cfg.temperature, "rows": table,
               "rm_pairwise_gold_accuracy": round(hits / pairs, 4) if pairs else None, "rm_pairwise_pairs": pairs,
               "seconds": round(watch.seconds(), 2)}
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"{'n':>4} {'gold':>8} {'proxy':>8} {'oracle':>8} {'KL':>7}")
    for r in table:
        print(f"{r['n']:>4} {r['gold']:>8.3f} {r['proxy']:>8.3f} {r['gold_oracle']:>8.3f} {r['kl_analytic']:>7.3f}")
    if pairs:
        print(f"[best-of-n] the reward model orders {summary['rm_pairwise_gold_accuracy']:.3f} of the {pairs} pairs of "
              f"samples with different gold scores as the gold judge does (0.5 = chance)")
    else:
        print("[best-of-n] no two samples of one prompt differ in gold score: no pairwise accuracy (try more samples)")
    if cfg.temperature != 1:
        print(f"[best-of-n] note: KL is to the SFT model sampled at T = {cfg.temperature:g}, not to the SFT model "
              "itself, so these rows are not on the frontier's axis (which runs best-of-n at T = 1)")
    print(f"[best-of-n] {summary['seconds']:.0f} s; table in {out}/summary.json")
    return summary
