"""The reward model: the SFT trunk plus a scalar head, trained on preference pairs with the Bradley-Terry loss.

Run it:
    minirlhf reward --preset tiny                       # on out/tiny/pairs/prefs.jsonl, from the SFT model
    minirlhf reward --preset tiny --prefs my_prefs.jsonl
    minirlhf reward --preset tiny --margin_coef=1 --run_name=reward_margin   # a variant next to the default,
    minirlhf ppo --preset tiny --reward_model=out/tiny/reward_margin/model.pt --run_name=ppo_margin  # used by PPO
    minirlhf reward --preset tiny --length_head_coef=1 --run_name=reward_odin  # ODIN: length bias taken out
    minirlhf reward --preset tiny --soft_labels --run_name=reward_soft   # the annotators' p_chosen as the target

What happens, top to bottom:
  1. read the pairs (`{"prompt","chosen","rejected"}`, validated line by line) and render each response as
     a full conversation ending in `<|end|>`;
  2. build the model: trunk initialised from SFT + `ScalarHead` (InstructGPT, Ouyang et al. 2022 §3.5);
     the score is read at the last real token (the `<|end|>`), never at a pad;
  3. train: chosen and rejected of a batch go through ONE forward pass (2B rows), loss
     `bradley_terry_loss(r_chosen, r_rejected)` (optionally with a confidence margin, reward centering, or
     `--soft_labels`: the annotator's probability p_chosen as the target instead of the one sampled label);
     validation accuracy against the annotators' labels and against the gold ordering;
     with `--length_head_coef` > 0, ODIN (Chen et al. 2024): a second head on the same trunk is trained
     to carry the labels' liking for length (`LengthDisentangled`, `losses.length_disentangle_loss`)
     and is dropped afterwards, so the saved reward model scores content, not length;
  4. normalise: sample responses from the SFT policy on RL prompts, score them, and set the head's gain and
     offset so those scores have mean 0 and std 1 (Ziegler et al. 2019 §2.2; lm-human-preferences). PPO's
     KL coefficient then means the same thing whatever the raw scale of the reward model;
     then, on the world's data, measure what it inherited from the annotators (`measure_bias`: flattery,
     length) and how well it ranks the SFT model's own samples (`on_policy_accuracy`: the pairs RL will
     show it, which the validation pairs do not resemble);
  5. write model.pt (trunk + head), tokenizer.json, metrics.jsonl, summary.json to out/<preset>/reward/.

Deliberate simplifications: one epoch-free step budget; pairs longer than the context are an error
unless `--truncate`, which drops them and reports how many (cutting would move the score off `<|end|>`).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys

import torch

from minirlhf import checkpoint as ck
from minirlhf import distributed as dist
from minirlhf.chat import render_conversation, render_prompt, render_reply
from minirlhf.common import (Stopwatch, autocast, begin_writing, config_key, file_digest, make_adamw, resolve_device,
                             reusable, setup_torch, write_json)
from minirlhf.config import RewardConfig, fill_from_preset, stage_dir
from minirlhf.data import DataError, read_jsonl, read_preferences_with_report, read_prompts
from minirlhf.engine import generate
from minirlhf.evaluate import eval_prompt_rows, judge_inputs
from minirlhf.losses import bradley_terry_loss, length_disentangle_loss
from minirlhf.model import ScalarHead, ScalarModel, at_last_token
from minirlhf.ops import pearson_correlation
from minirlhf.sft import batch_indices, stage_file, tokenizer_of, world_file
from minirlhf.tokenizer import END, Tokenizer
from minirlhf.train_loop import micro_batch_size, train_loop

STAGE = "reward"
ON_POLICY_K = 4  # SFT samples per prompt for the on-policy accuracy check (6 pairs per prompt)
DECISIVE_GAP = 0.5  # gold gap of a "decisive" pair: a right against a wrong answer (~0.85 vs -0.6), not two wordings


def row_where(source: str, row: dict, i: int) -> str:
    """Where a row came from: `{source}:{line}` for rows of the data readers (which record the line),
    else `{source}: record {i + 1}` for rows built in code."""
    return f"{source}:{row['line']}" if "line" in row else f"{source}: record {i + 1}"


def annotation(extra: dict, key: str, where: str, unit: bool = False) -> float | None:
    """An optional numeric field of a pair (p_chosen, gold_chosen, ...): a finite number or absent / null
    (-> None); with `unit`, in [0, 1]. Anything else is a DataError naming `where` and the key."""
    value = extra.get(key)
    if value is None:
        return None
    # finite as a float (an int beyond the float range is not; the comparison is exact for ints, false for NaN)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max
    if not ok or (unit and not 0 <= value <= 1):
        expected = "a number in [0, 1]" if unit else "a finite number"
        raise DataError(f'{where}: key "{key}" must be {expected} (or absent / null), '
                        f"got {type(value).__name__} {json.dumps(value)}")
    return float(value)


def encode_pairs(tok: Tokenizer, rows: list[dict], max_len: int, truncate: bool, source: str):
    """Each pair -> dict(chosen/rejected ids and loss masks, annotator probability, gold scores).

    The loss masks cover the final reply and its <|end|> (`render_reply`). p_chosen (in [0, 1]),
    gold_chosen and gold_rejected (both or neither) are checked to be numbers or absent. Over-long
    pairs are an error naming `{source}:{line}`, or (truncate) dropped and counted."""
    pairs, dropped = [], 0
    for i, row in enumerate(rows):
        where = row_where(source, row, i)
        extra = row.get("extra", {})
        p_chosen = annotation(extra, "p_chosen", where, unit=True)
        gold_c, gold_r = annotation(extra, "gold_chosen", where), annotation(extra, "gold_rejected", where)
        if (gold_c is None) != (gold_r is None):
            raise DataError(f'{where}: keys "gold_chosen" and "gold_rejected" must be both given or both absent')
        c, c_mask = render_reply(tok, row["prompt"], row["chosen"])
        r, r_mask = render_reply(tok, row["prompt"], row["rejected"])
        if max(len(c), len(r)) > max_len:
            if not truncate:
                raise DataError(f"{where}: the pair renders to {max(len(c), len(r))} tokens, more than the context "
                                f"({max_len}); pass --truncate=true to drop such pairs (they are counted)")
            dropped += 1
            continue
        pairs.append({"chosen": c, "rejected": r, "chosen_mask": c_mask, "rejected_mask": r_mask,
                      "p_chosen": p_chosen, "gold_chosen": gold_c, "gold_rejected": gold_r})
    if not pairs:
        raise ValueError(f"{source}: no usable pairs")
    return pairs, dropped


def load_pairs(tok: Tokenizer, prefs: str, eval_prefs: str, max_len: int, truncate: bool, stage: str):
    """Training and validation pairs, encoded -> (train, val, number of pairs dropped).

    Without `truncate`, an over-long or identical pair (in either file) is an error naming its file and
    line; with it, such pairs are dropped and the counts are printed (their sum is returned for the summary).
    """
    on_identical = "drop" if truncate else "error"
    rows, report = read_preferences_with_report(prefs, on_identical=on_identical)
    val_rows, val_report = read_preferences_with_report(eval_prefs, on_identical=on_identical)
    train, dropped = encode_pairs(tok, rows, max_len, truncate, prefs)
    val, dropped_val = encode_pairs(tok, val_rows, max_len, truncate, eval_prefs)
    identical = report["dropped_identical"] + val_report["dropped_identical"]
    if dropped + dropped_val + identical:
        dist.print0(f"[{stage}] dropped {dropped + dropped_val} pairs too long for the context and {identical} with "
                    f"identical responses ({prefs}: {dropped + report['dropped_identical']}, "
                    f"{eval_prefs}: {dropped_val + val_report['dropped_identical']})")
    return train, val, dropped + dropped_val + identical


def pad_right(seqs: list[list[int]], pad_id: int, device):
    """Right-pad -> ids (B, T), mask (B, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def score_pairs(model, pairs: list[dict], pad_id: int, device):
    """Chosen and rejected in one forward pass: (B,), (B,). `model` may be DDP-wrapped (forward is called)."""
    ids, mask = pad_right([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, device)
    scores = at_last_token(model(ids, mask), mask)  # (2B,); through forward so that DDP sees the call
    return scores[:len(pairs)], scores[len(pairs):]


class LengthDisentangled(torch.nn.Module):
    """ODIN's training-time reward model (Chen et al. 2024, §4): `model` plus a length head on its trunk.

    forward(idx, mask) -> (quality values, length values), each (B, T), from one pass of the trunk. The
    reward stage trains the sum of the two scores with the Bradley-Terry loss plus
    `losses.length_disentangle_loss`, then keeps `model` (trunk + quality head) and drops the length head.
    """

    def __init__(self, model: ScalarModel):
        super().__init__()
        self.model = model
        self.length_head = ScalarHead(model.config.n_embd)

    def forward(self, idx, attention_mask=None):
        """idx (B, T) -> (quality values, length values), each (B, T): both heads on one pass of the trunk."""
        hidden = self.model.trunk.hidden_states(idx, attention_mask)  # (B, T, C)
        return self.model.head(hidden), self.length_head(hidden)


def disentangled_pair_loss(model, pairs: list[dict], pad_id: int, device, cfg):
    """The ODIN training loss of one batch of pairs -> (loss, metrics). `model` is a (DDP-wrapped)
    LengthDisentangled; lengths are the responses' token counts (assistant tokens and the closing <|end|>).

    The correlations are over this micro-batch's 2B responses, as ODIN computes them per device batch: with
    gradient accumulation or several processes they are not those of the whole global batch, and N processes
    compute what one process with --grad_accum=N does (tests/test_distributed.py checks it)."""
    ids, mask = pad_right([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, device)
    quality, length = (at_last_token(v, mask) for v in model(ids, mask))  # (2B,) each
    lengths = torch.tensor([sum(p["chosen_mask"]) for p in pairs] + [sum(p["rejected_mask"]) for p in pairs],
                           dtype=torch.float32, device=device)  # (2B,)
    B = len(pairs)
    bt, m = pair_loss(quality[:B] + length[:B], quality[B:] + length[B:], pairs, cfg, device)
    inner = model.module if hasattr(model, "module") else model  # DDP keeps the module as .module
    reg, r = length_disentangle_loss(quality, length, lengths, inner.model.head.linear.weight,
                                     inner.length_head.linear.weight)
    return bt + cfg.length_head_coef * reg, {"accuracy": m["accuracy"], "margin": m["margins"].mean(), **r}


def annotator_probs(pairs: list[dict], option: str, device):
    """The annotator's probability of preferring "chosen", per pair (B,), clamped inside (0, 1)."""
    if any(p["p_chosen"] is None for p in pairs):
        raise ValueError(f"{option} needs a p_chosen field on every pair (the annotator's probability)")
    return torch.tensor([min(max(p["p_chosen"], 1e-6), 1 - 1e-6) for p in pairs], device=device)


def margins_for(pairs: list[dict], coef: float, device):
    """Llama-2-style margin from the annotator's confidence in the label: coef * max(0, logit(p_chosen))
    (None when coef = 0). p_chosen below 0.5 means the label went against the annotator's own odds: such
    a pair gets no margin, not the large one |logit| would give the least trustworthy labels."""
    if coef == 0:
        return None
    p = annotator_probs(pairs, "--margin_coef", device)
    return coef * torch.log(p / (1 - p)).clamp(min=0)


def label_probs_for(pairs: list[dict], soft_labels: bool, device):
    """--soft_labels: the annotator's p_chosen as the target of the Bradley-Terry loss (None = the label)."""
    return annotator_probs(pairs, "--soft_labels", device) if soft_labels else None


def pair_loss(rc, rr, pairs: list[dict], cfg: RewardConfig, device):
    """The Bradley-Terry loss of one batch's scores with the options of `cfg` (margin, centering, soft labels)."""
    return bradley_terry_loss(rc, rr, margins_for(pairs, cfg.margin_coef, device), cfg.center_coef,
                              label_probs_for(pairs, cfg.soft_labels, device))


@torch.no_grad()
def pair_accuracy(model, pairs: list[dict], pad_id: int, batch_size: int, device, dtype) -> dict:
    """Accuracy against the labels, against the gold ordering (pairs with different gold scores), and the mean
    margin. A tie of the two scores counts as a miss in both accuracies."""
    model.eval()
    label_hits, gold_hits, gold_n, margins = 0, 0, 0, []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        with autocast(device, dtype):
            rc, rr = score_pairs(model, chunk, pad_id, device)
        diff = (rc - rr).float().cpu()
        label_hits += int((diff > 0).sum())
        margins.append(diff)
        for p, d in zip(chunk, diff.tolist()):
            if p["gold_chosen"] is not None and p["gold_chosen"] != p["gold_rejected"]:
                gold_n += 1
                gold_hits += d * (p["gold_chosen"] - p["gold_rejected"]) > 0  # a score tie is a miss
    out = {"val_accuracy": label_hits / len(pairs), "val_margin": torch.cat(margins).mean().item()}
    if gold_n:
        out["val_gold_accuracy"] = gold_hits / gold_n
    return out


@torch.no_grad()
def normalise(model, policy, tok, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int,
              device, batch_size: int = 64) -> dict:
    """Set the head's gain/offset so scores of policy samples on `prompts` have mean 0 and std 1.

    Needs at least 2 prompts, and samples whose scores are not all equal (else a ValueError: the std would be
    NaN or 0). Also returns `corr_score_length`: Pearson's correlation of those scores with the samples'
    lengths in tokens (how much the reward model pays for length on the policy's own samples; ODIN's measure)."""
    if len(prompts) < 2:
        raise ValueError(f"normalising the reward model needs at least 2 calibration prompts, got {len(prompts)}")
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    raw, lengths = [], []
    for i in range(0, len(prompts), batch_size):
        g = generate(policy, prompts[i:i + batch_size], max_new_tokens, tok.end_id, tok.pad_id,
                     temperature=temperature, generator=gen)
        raw.append(model.score(g.tokens, g.attention_mask))
        lengths.append(g.response_mask.sum(1).float())
    raw = torch.cat(raw)  # scores with the current gain/offset
    head = model.head
    mean, std = raw.mean(), raw.std()
    if not std > 0:
        raise ValueError(f"the reward model gives all {len(raw)} calibration samples the same score "
                         f"({mean.item():.6g}): its scale cannot be normalised (std 0)")
    # new(x) = (old(x) - mean) / std  =>  gain' = gain / std, offset' = (offset - mean) / std
    head.gain.copy_(head.gain / std)
    head.offset.copy_((head.offset - mean) / std)
    return {"calibration_samples": len(raw), "raw_mean": mean.item(), "raw_std": std.item(),
            "corr_score_length": pearson_correlation(raw, torch.cat(lengths)).item()}


@torch.no_grad()
def score_responses(model, tok, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
    """Reward-model scores of (prompt, response) texts; responses are plain assistant text (no <|end|>)."""
    device = model.head.linear.weight.device
    scores: list[float] = []
    for i in range(0, len(prompts), batch_size):
        seqs = [render_conversation(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": r}])[0]
                for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        ids, mask = pad_right(seqs, tok.pad_id, device)
        scores += model.score(ids, mask).float().tolist()
    return scores


def measure_bias(model, tok, preset: str, seed: int, n: int = 200) -> dict:
    """The reward model's taste for flattery and length, next to the gold judge's.

    For held-out tasks (unsafe ones excluded) take the ideal answer, then the same answer with a flattering
    opener ("Great question! ...") and with one neutral filler sentence appended. The annotators like
    both (they were built with that bias); the gold judge penalises both. A reward model trained on the
    annotators' labels inherits their taste: `rm_prefers_flattery` is the share of tasks where it scores
    the flattering version higher, `gold_prefers_flattery` the same for the gold judge.
    """
    from minirlhf.world import build_world, ideal_responses, judge, tasks_for
    from minirlhf.world.phrases import FILLERS, FLATTERY_OPENERS

    rng = random.Random(seed)
    tasks = [t for t in tasks_for(build_world(preset, seed), "eval") if t.category != "unsafe"]
    tasks = rng.sample(tasks, min(n, len(tasks)))
    triples = []
    for t in tasks:
        b = ideal_responses(t)[0]
        triple = (t.prompt, b, f"{rng.choice(FLATTERY_OPENERS)} {b}", f"{b} {rng.choice(FILLERS)}")
        longest = max(len(render_conversation(tok, [{"role": "user", "content": t.prompt},
                                                    {"role": "assistant", "content": r}])[0]) for r in triple[1:])
        if longest <= model.config.block_size:  # keep the tasks whose variants all fit the context
            triples.append(triple)
    prompts = [t[0] for t in triples]
    base = [t[1] for t in triples]
    variants = {"flattery": [t[2] for t in triples], "length": [t[3] for t in triples]}
    tasks = triples
    rm_base = score_responses(model, tok, prompts, base)
    gold_base = [judge(p, b + END) for p, b in zip(prompts, base)]
    out: dict = {"bias_tasks": len(tasks)}
    for name, texts in variants.items():
        rm_v = score_responses(model, tok, prompts, texts)
        gold_v = [judge(p, t + END) for p, t in zip(prompts, texts)]
        out[f"rm_prefers_{name}"] = sum(v > b for v, b in zip(rm_v, rm_base)) / len(tasks)
        out[f"gold_prefers_{name}"] = sum(v > b for v, b in zip(gold_v, gold_base)) / len(tasks)
        out[f"rm_{name}_delta"] = sum(v - b for v, b in zip(rm_v, rm_base)) / len(tasks)
        out[f"gold_{name}_delta"] = sum(v - b for v, b in zip(gold_v, gold_base)) / len(tasks)
    return out


def pairwise_gold_accuracy(proxy: list[list[float]], gold: list[list[float]],
                           min_gap: float = 0.0) -> tuple[int, int]:
    """(hits, pairs): over every pair of samples of one prompt whose gold scores differ (by at least
    `min_gap`), how often the proxy orders them as the gold judge does (a proxy tie counts as a miss).
    Rows are prompts."""
    hits = pairs = 0
    for q, g in zip(proxy, gold):
        for i, j in itertools.combinations(range(len(g)), 2):
            if g[i] != g[j] and abs(g[i] - g[j]) >= min_gap:
                pairs += 1
                hits += (q[i] - q[j]) * (g[i] - g[j]) > 0
    return hits, pairs


def on_policy_stats(rows: list[dict], texts: list[list[str]], proxy: list[list[float]], judge_fn) -> dict:
    """`on_policy_accuracy`'s numbers from k scored samples per prompt row (texts and proxy: [rows][k]).

    Per split ("eval" -> `_heldout`, "train" -> `_train`), over the pairs with different gold scores:
      on_policy_pairs, on_policy_gold_accuracy   how many, and how often the reward model orders them as gold;
      on_policy_annotator_agreement              the annotators' expected agreement with gold on the same
                                                 pairs (the mean `preference_probability` of the better one);
      on_policy_label_ceiling                    the share of them where that probability is above one half:
                                                 the accuracy of a perfect model of the annotators;
      on_policy_decisive_pairs, ..._accuracy     the same restricted to pairs whose gold scores differ by at
                                                 least DECISIVE_GAP (a right against a wrong answer, not two
                                                 wordings of the same one).
    """
    from minirlhf.world import preference_probability

    out: dict = {}
    for split, name in (("eval", "heldout"), ("train", "train")):
        picked_proxy, picked_gold, agree = [], [], []
        for r, t, q in zip(rows, texts, proxy):
            if r["split"] != split:
                continue
            g = [judge_fn(r["prompt"], x) for x in t]
            picked_proxy.append(q)
            picked_gold.append(g)
            for i, j in itertools.combinations(range(len(g)), 2):
                if g[i] != g[j]:
                    better, worse = (i, j) if g[i] > g[j] else (j, i)
                    agree.append(preference_probability(g[better], g[worse], t[better], t[worse]))
        hits, pairs = pairwise_gold_accuracy(picked_proxy, picked_gold)
        out[f"on_policy_pairs_{name}"] = pairs
        out[f"on_policy_gold_accuracy_{name}"] = hits / pairs if pairs else float("nan")
        out[f"on_policy_annotator_agreement_{name}"] = sum(agree) / len(agree) if agree else float("nan")
        out[f"on_policy_label_ceiling_{name}"] = sum(p > 0.5 for p in agree) / len(agree) if agree else float("nan")
        hits, pairs = pairwise_gold_accuracy(picked_proxy, picked_gold, DECISIVE_GAP)
        out[f"on_policy_decisive_pairs_{name}"] = pairs
        out[f"on_policy_decisive_accuracy_{name}"] = hits / pairs if pairs else float("nan")
    return out


@torch.no_grad()
def on_policy_accuracy(model, policy, tok, rows: list[dict], k: int, max_new_tokens: int, temperature: float,
                       seed: int) -> dict:
    """The reward model's gold accuracy on what RL will show it: pairs of the SFT policy's own samples.

    The validation pairs are mostly templated styles (ideal vs rude, vs wrong, ...); PPO and best-of-n
    instead ask the reward model to rank samples of one prompt from the policy, which differ in subtler
    ways (a right or a wrong fact, a few words more). For each prompt row (`split` "eval" = held-out,
    "train" = training split) sample k responses, score them with the reward model and the gold judge, and
    count over all k-choose-2 pairs with different gold scores how often the two order them alike
    (`on_policy_stats`). Next to it, the annotators' expected agreement with gold on the same pairs (what
    one fresh label would reach) and the label ceiling (what a perfect model of their preferences, picking
    the likelier answer, would reach), and the accuracy on the decisive pairs alone (a right
    against a wrong answer). 0.5 is chance: a reward model at 0.5 on held-out prompts gives best-of-n and
    PPO nothing to climb there but its own biases.
    """
    from minirlhf.best_of_n import best_of_n_responses
    from minirlhf.world import judge

    prompts = [render_prompt(tok, r["prompt"]) for r in rows]
    pool = best_of_n_responses(policy, model, tok, prompts, k, temperature, max_new_tokens, seed)
    return on_policy_stats(rows, pool.texts, pool.proxy.tolist(), judge)


def annotator_ceiling(path: str) -> dict:
    """How often the annotators' own labels agree with the gold ordering on the validation pairs, and
    the gold accuracy reachable from such labels.

    A reward model trained on those labels is compared with them against the annotators' own agreement with
    the truth (it can agree with single labels more often than that, up to the mean of max(p, 1 - p),
    because the annotators' bias is predictable: `world.agreement_stats`); against gold it can do better
    than the annotators (it averages their noise out), up to `label_ceiling_gold_accuracy`: the share of
    pairs where the annotators prefer the gold-better answer with probability above one half. What stays
    below it is their bias (flattery, length).
    """
    from minirlhf.world import agreement_stats

    rows = [obj for _, obj in read_jsonl(path)]
    if not all(r.get(k) is not None for r in rows for k in ("gold_chosen", "gold_rejected", "p_chosen")):
        return {}
    stats = agreement_stats(rows)
    return {"annotator_gold_agreement": stats["agreement"], "label_ceiling_gold_accuracy": stats["label_ceiling"]}


def run(cfg: RewardConfig) -> dict:
    """`minirlhf reward`: train the reward model (SFT trunk + ScalarHead) on preference pairs, then normalise it.

    Reads the SFT model (--init, default out/<preset>/sft/model.pt: the trunk's init and the policy sampled for
    calibration), the pairs (--prefs, default out/<preset>/pairs/prefs.jsonl), the validation pairs (--eval_prefs,
    default the world's prefs_eval.jsonl) and the calibration prompts (the first --calibration_prompts of --prompts,
    default the world's rl_prompts.jsonl). After training, `normalise` sets the head's gain and offset; trained on the
    world's pairs (no --prefs), it is also measured by `measure_bias` and `on_policy_accuracy`. Writes under
    out/<preset>/reward/ (or --run_name) tokenizer.json, config.json, metrics.jsonl, ckpt.pt, model.pt (trunk + head; an
    ODIN length head is dropped) and summary.json, and returns the summary; on every rank under torchrun. A finished
    run with the same config, inputs and code is reused (not with --force or --resume); --stop_after before the end
    returns {"stage", "steps", "interrupted": True}. ValueError for a negative coefficient, --margin_coef or --soft_labels on
    pairs without p_chosen, or fewer than 2 calibration prompts that leave room for --max_new_tokens.
    """
    fill_from_preset(cfg)
    if cfg.length_head_coef < 0 or cfg.margin_coef < 0 or cfg.center_coef < 0:
        raise ValueError(f"--length_head_coef={cfg.length_head_coef}, --margin_coef={cfg.margin_coef}, "
                         f"--center_coef={cfg.center_coef}: each must be >= 0 (0 = off)")
    out = stage_dir(cfg, cfg.run_name or STAGE)
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()
    init = cfg.init or stage_file(cfg, "sft", "model.pt")
    prefs = cfg.prefs or stage_file(cfg, "pairs", "prefs.jsonl")
    eval_prefs = cfg.eval_prefs or world_file(cfg, "prefs_eval.jsonl", "--eval_prefs")
    prompts_path = cfg.prompts or world_file(cfg, "rl_prompts.jsonl", "--prompts")
    inputs = {**{n: file_digest(p) for n, p in
                 (("init", init), ("prefs", prefs), ("eval", eval_prefs), ("prompts", prompts_path))},
              **judge_inputs(cfg)}  # its flattery and on-policy numbers are scored by the gold judge
    key = config_key(cfg, inputs, __name__)  # __name__: its code (and what it imports) is part of the key
    if (summary := reusable(out, key, cfg.force, resume=cfg.resume)) is not None:
        dist.print0(f"[reward] reusing {out}/model.pt (same config, inputs and code; --force to retrain)")
        return summary

    # 1. data
    tok = tokenizer_of(init)
    policy, _ = ck.load_model(init, device)  # the SFT model: trunk init, and the calibration policy
    max_len = policy.config.block_size
    train, val, skipped = load_pairs(tok, prefs, eval_prefs, max_len, cfg.truncate, STAGE)
    missing = sum(p["p_chosen"] is None for p in train)  # options that read the annotator's probability
    for option, on in (("--margin_coef", cfg.margin_coef), ("--soft_labels", cfg.soft_labels)):
        if on and missing:
            raise ValueError(f"{option} needs the annotator's probability: {missing} of the {len(train)} pairs in "
                             f"{prefs} have no p_chosen field")
    # the calibration prompts of step 4, checked now rather than after training: each must leave room for
    # --max_new_tokens, and the std of their samples' scores needs at least 2
    prompt_rows = read_prompts(prompts_path)[: cfg.calibration_prompts]
    prompt_ids = [render_prompt(tok, p) for p in prompt_rows]
    prompt_ids = [p for p in prompt_ids if len(p) + cfg.max_new_tokens <= max_len]
    if len(prompt_ids) < 2:
        raise ValueError(f"{prompts_path}: only {len(prompt_ids)} of the first {len(prompt_rows)} prompts "
                         f"(--calibration_prompts={cfg.calibration_prompts}) leave room for --max_new_tokens="
                         f"{cfg.max_new_tokens} in the context ({max_len}); normalising the reward model needs "
                         f"at least 2: raise --calibration_prompts, lower --max_new_tokens or use shorter prompts")
    begin_writing(out, cfg, tokenizer_from=init)  # inputs read and checked: only now is `out` touched

    # 2. model: SFT trunk + a fresh scalar head
    torch.manual_seed(cfg.seed)
    trunk, _ = ck.load_model(init, device)
    model = ScalarModel(trunk).to(device)
    # ODIN: train with a second (length) head, checkpointed with the model while training, dropped at the end
    trained = LengthDisentangled(model).to(device) if cfg.length_head_coef else model
    heads = [p for name, p in trained.named_parameters() if "trunk." not in name]
    optimizer = make_adamw(model.trunk.optimizer_groups(cfg.weight_decay) + [{"params": heads, "weight_decay": 0.0}],
                           cfg.lr, (cfg.beta1, cfg.beta2), device)
    dist.print0(f"[reward] {len(train)} training pairs, {len(val)} validation pairs, init {init}")

    # 3. train (the Bradley-Terry loss is a mean over pairs: each micro-batch weighs its share of the pairs)
    micro = micro_batch_size(cfg)  # checks that grad_accum divides batch_size; validation runs in micro-batches too
    ddp_model = dist.data_parallel(trained)  # the model itself in one process

    def batch_loss(step, rows):
        idx = batch_indices(len(train), cfg.batch_size, step, cfg.seed)[rows]  # this micro-batch of the global batch
        chunk = [train[i] for i in idx]
        if cfg.length_head_coef:
            return disentangled_pair_loss(ddp_model, chunk, tok.pad_id, device, cfg)
        rc, rr = score_pairs(ddp_model, chunk, tok.pad_id, device)
        loss, m = pair_loss(rc, rr, chunk, cfg, device)
        return loss, {"accuracy": m["accuracy"], "margin": m["margins"].mean()}

    def evaluate():
        return pair_accuracy(model, val, tok.pad_id, micro, device, cfg.dtype)

    result = train_loop(STAGE, cfg, trained, optimizer, out, batch_loss, evaluate, device, loss_name="bt_loss",
                        wrapped=ddp_model, inputs=inputs)
    if result["interrupted"]:
        return {"stage": STAGE, "steps": result["steps"], "interrupted": True}
    if not dist.is_main():
        return dist.share()  # rank 0 alone normalises, evaluates and writes the artifacts; its summary comes back

    # 4. normalise on SFT samples (of the prompts read in step 1)
    calib = normalise(model, policy, tok, prompt_ids, cfg.max_new_tokens, cfg.temperature, cfg.seed, device)
    final = pair_accuracy(model, val, tok.pad_id, micro, device, cfg.dtype)
    final.update(annotator_ceiling(eval_prefs))
    if not cfg.prefs:  # trained on the world's data: measure the taste it inherited from the annotators,
        final.update(measure_bias(model, tok, cfg.preset, cfg.seed))  # and how it ranks the policy's own samples
        rows = eval_prompt_rows(os.path.dirname(world_file(cfg, "eval_prompts.jsonl")))
        final.update(on_policy_accuracy(model, policy, tok, rows, ON_POLICY_K, cfg.max_new_tokens, cfg.temperature,
                                        cfg.seed))

    # 5. artifacts
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(model, STAGE, step=result["steps"]))
    summary = {"stage": STAGE, "key": key, "steps": result["steps"], "stopped_early": result["stopped_early"],
               **{k: round(v, 4) for k, v in final.items()},
               "train_pairs": len(train), "val_pairs": len(val), "dropped_pairs": skipped,
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in calib.items()},
               "seconds": round(watch.seconds(), 2), "device": str(device)}
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[reward] validation accuracy {final['val_accuracy']:.3f} vs labels"
          + (f", {final['val_gold_accuracy']:.3f} vs gold" if "val_gold_accuracy" in final else "")
          + (f"; on the SFT model's own samples {final['on_policy_gold_accuracy_heldout']:.3f} vs gold on held-out "
             f"prompts, {final['on_policy_gold_accuracy_train']:.3f} on training prompts"
             if "on_policy_gold_accuracy_heldout" in final else "")
          + f"; normalised on {calib['calibration_samples']} SFT samples (correlation of the scores with their "
            f"length {calib['corr_score_length']:.2f}); {summary['seconds']:.0f} s")
    return dist.share(summary)

