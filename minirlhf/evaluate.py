"""Evaluation against the TinyWorld: one function that every stage and lesson uses on a policy.

    from minirlhf.evaluate import evaluate_policy
    metrics, samples = evaluate_policy(policy, tok, "out/tiny/world", reference=sft_model, reward_model=rm,
                                       pretrain_dir="out/tiny/pretrain")
    minirlhf eval --checkpoint out/tiny/sft/model.pt        # the same, as a printed table + eval.json,
                                                            # with the mean gold per prompt category
    minirlhf eval --checkpoint out/tiny/sft/model.pt --gold-judge my_judges:politeness   # your own judge
    minirlhf eval --checkpoint out/tiny/dpo/model.pt --seeds=1,2,3,4,5   # mean and std over sampling seeds

What `evaluate_policy` measures (one sampled response per prompt, temperature 1 by default, fixed seed;
the prompts are the same for every sampling seed):

| metric                  | meaning                                                                         |
|-------------------------|---------------------------------------------------------------------------------|
| gold                    | mean gold-judge score on held-out prompts (held-out entities and unsafe topics) |
| gold_train              | the same on the training-split prompts (eval_prompts.jsonl's, and a fixed       |
|                         | sample of `n_train` RL prompts)                                                 |
| gold_all                | the same over every prompt evaluated                                            |
| proxy                   | mean reward-model score (normalised scale) on held-out prompts (if an RM is given)|
| kl_k1, kl_k3            | mean over ALL samples (held-out and training-split prompts) of the summed       |
|                         | per-token KL estimators to the reference (the policy as sampled, at             |
|                         | `temperature`, against the reference at 1); greedy, temperature 0, samples a    |
|                         | point mass, whose KL is exactly -log pi_ref(response): both columns report that |
| kl_k1_heldout,          | the same means over the held-out prompts only (the prompts of `gold`)           |
| kl_k3_heldout           |                                                                                 |
| fact_acc_train/_heldout | share of fact questions answered correctly (answer present, nothing wrong)      |
| refusal_sft_unsafe      | share of unsafe requests refused, unsafe topics seen in SFT (prompts from both  |
|                         | the held-out prompt set and the training-split sample)                          |
| refusal_heldout_unsafe  | the same for unsafe topics never seen in SFT (refusal generalisation)           |
| over_refusal            | share of harmless requests (some merely sound risky) that were refused          |
| flattery_rate           | share of responses with a flattering phrase                                     |
| length                  | mean response length in tokens (the <|end|> included)                            |
| eos_rate                | share of responses that ended with <|end|> within the budget                    |
| heldout_ppl             | perplexity on held-out pretraining text: a proxy for the alignment tax          |

`cloze_accuracy` probes what a base model knows ("The capital of France is" -> "Paris"), and
`forum_eval` measures how a base model behaves when asked in the forum format it saw in pretraining
("Q: ...\\nA:"): its answer is cut at the end of the line and judged as if it had ended its turn (so a
base model is not charged for a chat token it has never seen).

Deliberate simplifications: one sample per prompt (means over a few hundred prompts; enough to compare
stages, not to resolve differences of a few hundredths: on `tiny` the held-out gold of one SFT model
ranges from 0.21 to 0.28 over six seeds -- `--seeds` measures that noise for any checkpoint); refusals
and flattery are detected by phrases.
"""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import torch
import torch.nn.functional as F

from minirlhf import distributed as dist
from minirlhf import ops
from minirlhf.chat import render_prompt
from minirlhf.engine import generate, response_logprobs
from minirlhf.tokenizer import END


def read_rows(path: str) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ----------------------------------------------------------------------------------------------------
# base models: knowledge (cloze) and behaviour (forum)


@torch.no_grad()
def complete(model, tok, texts: list[str], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
             batch_size: int = 64, stop_id: int | None = None) -> list[str]:
    """Plain-text continuations of `texts` (no chat tokens), decoded; stops at `stop_id` (default <|endoftext|>)."""
    gen = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)
    stop = tok.eot_id if stop_id is None else stop_id
    budget = min(max_new_tokens, model.config.block_size - 1)
    outs: list[str] = []
    for chunk in _batches(texts, batch_size):
        ids = [tok.encode(t)[-(model.config.block_size - budget):] for t in chunk]
        g = generate(model, ids, budget, eos_id=stop, pad_id=tok.pad_id, temperature=temperature, generator=gen)
        for row, m in zip(g.response.tolist(), g.response_mask.tolist()):
            outs.append(tok.decode([t for t, keep in zip(row, m) if keep and t != stop]))
    return outs


def cloze_accuracy(model, tok, world_dir: str, device=None, max_new_tokens: int = 6) -> dict[str, float]:
    """Share of fact cloze prompts whose greedy continuation starts with the answer, per entity split."""
    rows = read_rows(os.path.join(world_dir, "cloze.jsonl"))
    conts = complete(model, tok, [r["prompt"] for r in rows], max_new_tokens)
    hits: dict[str, list[bool]] = {}
    for r, c in zip(rows, conts):
        hits.setdefault(r["split"], []).append(c.strip().lower().startswith(r["answer"].strip().lower()))
    return {split: sum(h) / len(h) for split, h in sorted(hits.items())}


FORUM_SAMPLES = 4  # samples per forum-eval question when base and SFT are compared (less noise than one)


def forum_eval(model, tok, world_dir: str, temperature: float = 1.0, seed: int = 0,
               max_new_tokens: int = 40, samples_per_prompt: int = 1) -> tuple[dict, list[dict]]:
    """The base model answering forum-format questions, judged like assistant replies.

    Returns ({"forum_gold", "forum_unsafe_refusal", "forum_fact_acc"}, samples); with samples_per_prompt
    = k every question is asked k times (independent samples), and the means are over all of them.
    """
    from minirlhf.world import extract_forum_answer, is_refusal, judge, judge_terms

    rows = [r for r in read_rows(os.path.join(world_dir, "forum_eval.jsonl")) for _ in range(samples_per_prompt)]
    conts = complete(model, tok, [r["prompt"] for r in rows], max_new_tokens, temperature, seed, stop_id=tok.eot_id)
    samples = []
    for r, c in zip(rows, conts):
        answer = extract_forum_answer(c)
        response = answer + END  # the end of the forum line is the end of the turn
        samples.append({"prompt": r["chat_prompt"], "category": r["category"], "response": answer,
                        "gold": judge(r["chat_prompt"], response), "terms": judge_terms(r["chat_prompt"], response)})
    unsafe = [s for s in samples if s["category"] == "unsafe"]
    facts = [s for s in samples if s["category"] == "fact"]
    metrics = {"forum_gold": float(np.mean([s["gold"] for s in samples])),
               "forum_unsafe_refusal": float(np.mean([is_refusal(s["response"]) for s in unsafe])) if unsafe else 0.0,
               "forum_fact_acc": float(np.mean([_correct(s["terms"]) for s in facts])) if facts else 0.0}
    return metrics, samples


def _correct(terms: dict) -> bool:
    """A fact answer is correct when the judge credits the answer and finds nothing wrong."""
    return "answer" in terms and "wrong" not in terms


# ----------------------------------------------------------------------------------------------------
# chat policies


def forum_prompt_rows(world_dir: str, samples_per_prompt: int = 1) -> list[dict]:
    """The forum-eval questions as chat prompts: the same questions the base model was asked (each
    repeated samples_per_prompt times)."""
    return [{"prompt": r["chat_prompt"], "category": r["category"], "topic": r["topic"], "split": r["split"]}
            for r in read_rows(os.path.join(world_dir, "forum_eval.jsonl")) for _ in range(samples_per_prompt)]


def eval_prompt_rows(world_dir: str, n_train: int = 120, seed: int = 0) -> list[dict]:
    """eval_prompts.jsonl (two thirds held-out prompts, split "eval", one third training-split prompts, split
    "train") plus `n_train` of the RL prompts (split "train"), drawn with `seed`; `evaluate_policy` keeps the
    default seed, so the prompts do not change with the sampling seed. On tiny: 168 held-out prompts and
    122 + n_train training-split ones.

    Each row: prompt, category, topic, split ("eval" or "train"), and for unsafe prompts whether the
    topic was seen in SFT ("sft") or not ("heldout").
    """
    with open(os.path.join(world_dir, "summary.json")) as f:
        eval_only = set(json.load(f)["unsafe_topics"]["eval_only"])
    held = read_rows(os.path.join(world_dir, "eval_prompts.jsonl"))
    train = read_rows(os.path.join(world_dir, "rl_prompts.jsonl"))
    train = random.Random(seed).sample(train, min(n_train, len(train)))
    rows = []
    for r in held + train:
        row = {k: r[k] for k in ("prompt", "category", "topic", "split") if k in r}
        if row["category"] == "unsafe":
            row["unsafe_group"] = "heldout" if r["topic"] in eval_only else "sft"
        rows.append(row)
    return rows


@torch.no_grad()
def heldout_perplexity(model, pretrain_dir: str, block_size: int, n_windows: int = 32, seed: int = 0) -> float:
    """exp(mean next-token loss) on fixed windows of the held-out pretraining tokens (val.bin)."""
    from minirlhf.pretrain import load_tokens

    data = load_tokens(os.path.join(pretrain_dir, "val.bin"), model.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    T = min(block_size, len(data) - 1)
    starts = torch.randint(0, len(data) - T - 1, (n_windows,), generator=gen).tolist()
    device = model.lm_head.weight.device
    x = torch.stack([torch.from_numpy(data[s:s + T].astype(np.int64)) for s in starts]).to(device)  # (W, T)
    y = torch.stack([torch.from_numpy(data[s + 1:s + 1 + T].astype(np.int64)) for s in starts]).to(device)
    was = model.training
    model.eval()
    losses = [F.cross_entropy(ops.upcast(model(xb)).flatten(0, 1), yb.flatten()) for xb, yb in
              zip(x.split(8), y.split(8))]
    model.train(was)
    return math.exp(torch.stack(losses).mean().item())


@torch.no_grad()
def evaluate_policy(policy, tok, world_dir: str, reference=None, reward_model=None, pretrain_dir: str | None = None,
                    temperature: float = 1.0, max_new_tokens: int = 48, seed: int = 0, n_train: int = 120,
                    batch_size: int = 64, judge_fn=None, rows: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """Sample one response per evaluation prompt and measure everything in the module docstring.

    The prompts go in batches of `batch_size`, batch b sampled with a generator seeded by (seed, b). Under
    torchrun every rank must call this: rank r samples and judges batches r, r + N, ...; the samples are
    all-gathered, so every rank returns the same metrics and samples as one process would. A batch's
    response budget is min(max_new_tokens, block_size - its longest prompt), so a short prompt batched with
    one near the context limit gets fewer tokens (never on tiny and larger, whose prompts leave room for 48
    new tokens; on micro's 64-token context it can happen).

    reference: the model KL is measured against (None: KL is not reported); reward_model: a ScalarModel
    for the proxy reward; judge_fn(prompt, response) -> float replaces the gold judge (bring your own);
    rows: the prompts to use (dicts with prompt, category, split) instead of `eval_prompt_rows`.
    Returns (metrics, samples) where samples hold prompt, response, gold, proxy, kl per prompt.
    """
    from minirlhf.world import is_flattering, is_refusal, judge, judge_terms, strip_end

    judge_fn = judge_fn or judge
    device = policy.lm_head.weight.device
    rows = rows if rows is not None else eval_prompt_rows(world_dir, n_train)  # the same for every sampling seed
    was = policy.training
    policy.eval()
    samples: list[dict] = []
    chunks = list(_batches(rows, batch_size))
    for b in range(dist.rank(), len(chunks), dist.world_size()):  # this rank's batches (all of them in one process)
        chunk = chunks[b]
        prompts = [render_prompt(tok, r["prompt"]) for r in chunk]
        budget = min(max_new_tokens, policy.config.block_size - max(len(p) for p in prompts))
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)  # batch b: the same on any rank
        g = generate(policy, prompts, budget, tok.end_id, tok.pad_id, temperature=temperature, generator=gen)
        P = g.prompt.size(1)
        mask = g.response_mask.float()  # (B, N)
        extra: dict[str, list] = {}
        if reference is not None:
            ref_logp = response_logprobs(reference, g.tokens, g.attention_mask, P)  # (B, N)
            if temperature > 0:
                logp = response_logprobs(policy, g.tokens, g.attention_mask, P, temperature)  # (B, N), as sampled
                extra["kl_k1"] = ops.masked_sum(ops.kl_k1(logp, ref_logp), mask, dim=1).tolist()
                extra["kl_k3"] = ops.masked_sum(ops.kl_k3(logp, ref_logp), mask, dim=1).tolist()
            else:  # greedy: a point mass on its response y, whose KL to the reference is exactly -log pi_ref(y)
                exact = ops.masked_sum(-ref_logp, mask, dim=1).tolist()  # (B,)
                extra["kl_k1"], extra["kl_k3"] = exact, exact
        if reward_model is not None:
            extra["proxy"] = reward_model.score(g.tokens, g.attention_mask).float().tolist()
        ended = g.ended(tok.end_id).tolist()
        lengths = g.response_mask.sum(1).tolist()
        for i, r in enumerate(chunk):
            ids = [t for t, m in zip(g.response[i].tolist(), g.response_mask[i].tolist()) if m]
            text = tok.decode(ids)  # ends with "<|end|>" when the model emitted it
            body = strip_end(text)[0]
            s = {**r, "response": text, "gold": judge_fn(r["prompt"], text), "length": lengths[i],
                 "ended": ended[i], "refusal": is_refusal(body), "flattery": is_flattering(body),
                 "correct": _correct(judge_terms(r["prompt"], text))}
            s.update({k: v[i] for k, v in extra.items()})
            samples.append(s)
    policy.train(was)
    if dist.is_distributed():  # every rank's samples to every rank, back in prompt order (batch b on rank b % N)
        per_rank = dist.all_gather_objects(samples)
        samples = [s for b in range(len(chunks)) for s in
                   per_rank[b % len(per_rank)][(b // len(per_rank)) * batch_size:][:len(chunks[b])]]

    def mean(key, where=lambda s: True):
        vals = [float(s[key]) for s in samples if where(s)]
        return float(np.mean(vals)) if vals else float("nan")

    held = lambda s: s["split"] == "eval"  # noqa: E731
    metrics = {
        "gold": mean("gold", held), "gold_train": mean("gold", lambda s: s["split"] == "train"),
        "gold_all": mean("gold"),
        "fact_acc_train": mean("correct", lambda s: s["category"] == "fact" and s["split"] == "train"),
        "fact_acc_heldout": mean("correct", lambda s: s["category"] == "fact" and held(s)),
        "refusal_sft_unsafe": mean("refusal", lambda s: s.get("unsafe_group") == "sft"),
        "refusal_heldout_unsafe": mean("refusal", lambda s: s.get("unsafe_group") == "heldout"),
        "over_refusal": mean("refusal", lambda s: s["category"] == "harmless"),
        "flattery_rate": mean("flattery"), "length": mean("length"), "eos_rate": mean("ended"),
        "n_prompts": len(samples),
    }
    if reward_model is not None:
        metrics["proxy"] = mean("proxy", held)
    if reference is not None:
        metrics["kl_k1"] = mean("kl_k1")
        metrics["kl_k3"] = mean("kl_k3")
        metrics["kl_k1_heldout"] = mean("kl_k1", held)  # the prompts `gold` and `proxy` are measured on
        metrics["kl_k3_heldout"] = mean("kl_k3", held)
    if pretrain_dir is not None:
        metrics["heldout_ppl"] = heldout_perplexity(policy, pretrain_dir, policy.config.block_size)
    return metrics, samples


SPLIT_NAMES = {"eval": "held-out", "train": "training split"}  # the prompt rows' `split`, as tables print it


def gold_by_category(samples: list[dict]) -> dict[tuple[str, str], tuple[float, int]]:
    """Mean gold score and sample count per (split, category) of `evaluate_policy`'s samples (the rows of a
    stage's samples.jsonl): where a policy's gold reward comes from, and where it was lost. Rows without a
    split or category (prompts brought by the user) count as "unknown"."""
    groups: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        groups.setdefault((s.get("split", "unknown"), s.get("category", "unknown")), []).append(float(s["gold"]))
    return {k: (float(np.mean(v)), len(v)) for k, v in groups.items()}


def load_judge(spec: str):
    """`--gold-judge module:function` -> a judge(prompt, response) -> float; "" -> None (the world's judge).

    `module` is imported by name (an installed module, or a .py file in the current directory), or
    `path/to/file.py:function` loads that file. The judge receives the prompt (a string or a message list,
    as in the prompt file) and the decoded response (ending in "<|end|>" when the model emitted it); a
    result that is not a real number is an error naming the judge.
    """
    import importlib
    import importlib.util
    import numbers
    import sys

    if not spec:
        return None
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"--gold_judge={spec!r}: expected module:function, e.g. my_judges:politeness")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise ImportError(f"no file {module_name}")
            file_spec = importlib.util.spec_from_file_location(os.path.basename(module_name)[:-3], module_name)
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:  # `minirlhf eval` run as a script does not search the current folder
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or an error raised while the module runs
        raise ValueError(f"--gold_judge={spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"--gold_judge={spec!r}: {module_name!r} has no function {func_name!r}")

    def judge_fn(prompt, response):
        score = func(prompt, response)
        if not isinstance(score, numbers.Real) or isinstance(score, bool):
            raise ValueError(f"--gold_judge={spec!r} returned {type(score).__name__} {score!r}, expected a float")
        return float(score)

    judge_fn.source_file = getattr(module, "__file__", None)  # what `judge_inputs` digests
    return judge_fn


def judge_inputs(cfg) -> dict[str, str]:
    """What a stage's gold-judge numbers depend on besides its models and data, for its reuse key
    (`common.config_key`): the world package's source (the judge, the annotators, the prompt templates), the
    world's evaluation prompt files once built, and the file a --gold_judge comes from. So a stage whose judge
    changed is measured again, not reused with the numbers the old judge gave."""
    from minirlhf.common import file_digest
    from minirlhf.world.build import source_digest

    inputs = {"world_source": source_digest()}
    world_dir = os.path.join(cfg.out_dir, cfg.preset, "world")
    for name in ("eval_prompts.jsonl", "forum_eval.jsonl"):
        if os.path.exists(os.path.join(world_dir, name)):
            inputs[name] = file_digest(os.path.join(world_dir, name))
    spec = getattr(cfg, "gold_judge", "")
    if spec:
        source = load_judge(spec).source_file
        inputs["gold_judge"] = file_digest(source) if source else spec
    return inputs


def format_table(results: dict[str, dict], keys: list[str] | None = None) -> str:
    """A plain-text table: one column per model, one row per metric."""
    names = list(results)
    keys = keys or [k for k in results[names[0]] if isinstance(results[names[0]][k], (int, float))]
    width = max(len(k) for k in keys) + 2
    lines = [" " * width + "".join(f"{n:>12}" for n in names)]
    for k in keys:
        cells = []
        for n in names:
            v = results[n].get(k)
            cells.append(f"{v:>12.3f}" if isinstance(v, float) else f"{v!s:>12}")
        lines.append(f"{k:<{width}}" + "".join(cells))
    return "\n".join(lines)


def parse_seeds(text: str) -> list[int]:
    """"1,2,3" -> [1, 2, 3], with a clear error for anything else (at least two distinct seeds)."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds={text!r}: expected comma-separated integers, e.g. --seeds=1,2,3") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={text!r}: give at least two distinct seeds (one seed: --seed)")
    return seeds


def mean_and_std(runs: list[dict]) -> tuple[dict, dict]:
    """Per metric, the mean and the sample standard deviation (n - 1) over several evaluations; NaN values
    (a metric with no prompts) are left out of both."""
    mean, std = {}, {}
    for k in runs[0]:
        vals = [float(r[k]) for r in runs if isinstance(r[k], (int, float)) and not math.isnan(float(r[k]))]
        if not vals:
            continue
        mean[k] = float(np.mean(vals))
        std[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
    return mean, std


def run(cfg) -> dict:
    """`minirlhf eval`: load the policy (and the reference and reward model if present), print the table."""
    from minirlhf.checkpoint import load_model, load_scalar_model
    from minirlhf.common import check_same_tokenizer, resolve_device, same_tokenizer, write_json
    from minirlhf.sample import tokenizer_for

    if not cfg.checkpoint:
        raise ValueError("--checkpoint is required, e.g. --checkpoint=out/tiny/sft/model.pt")
    judge_fn = load_judge(cfg.gold_judge)  # before any model is loaded: a bad spec fails at once
    seeds = parse_seeds(cfg.seeds) if cfg.seeds else [cfg.seed]
    output = cfg.output or os.path.join(os.path.dirname(os.path.abspath(cfg.checkpoint)), "eval.json")
    if os.path.isdir(output):  # found now, not after the whole evaluation
        raise ValueError(f"--output={output} is a folder; give a file name, e.g. {os.path.join(output, 'eval.json')}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise FileNotFoundError(f"--output={output}: the folder {os.path.dirname(os.path.abspath(output))} does not exist")
    device = resolve_device(cfg.device)
    base = os.path.join(cfg.out_dir, cfg.preset)
    world_dir = os.path.join(base, "world")
    if not os.path.exists(os.path.join(world_dir, "eval_prompts.jsonl")):
        raise FileNotFoundError(f"no evaluation prompts in {world_dir}: is --preset={cfg.preset} the checkpoint's "
                                f"preset? (else build them: minirlhf world --preset {cfg.preset})")
    policy, _ = load_model(cfg.checkpoint, device)
    tok = tokenizer_for(cfg.checkpoint)

    def companion(given: str, default: str, flag: str) -> str:
        """The model to measure against ("" = none): one given by `flag` must exist and read the policy's tokens;
        the preset's `default` is taken when it exists and does, else left out with a note."""
        if given:
            if not os.path.exists(given):
                raise FileNotFoundError(f"{flag}={given} does not exist")
            check_same_tokenizer(cfg.checkpoint, given, flag)
            return given
        if os.path.exists(default) and not same_tokenizer(cfg.checkpoint, default):
            print(f"[eval] {default} reads another tokenizer than {cfg.checkpoint}: left out (choose one with {flag})")
            return ""
        return default if os.path.exists(default) else ""

    ref_path = companion(cfg.reference, os.path.join(base, "sft", "model.pt"), "--reference")
    rm_path = companion(cfg.reward_model, os.path.join(base, "reward", "model.pt"), "--reward_model")
    reference = load_model(ref_path, device)[0] if ref_path else None
    reward_model = load_scalar_model(rm_path, device)[0] if rm_path else None
    pretrain_dir = os.path.join(base, "pretrain")  # held-out perplexity on its val.bin: the base model's tokens
    ppl_dir = pretrain_dir if os.path.exists(os.path.join(pretrain_dir, "val.bin")) else None
    if ppl_dir and not same_tokenizer(cfg.checkpoint, os.path.join(pretrain_dir, "model.pt")):
        print(f"[eval] no held-out perplexity: {pretrain_dir}/val.bin holds another tokenizer's ids")
        ppl_dir = None
    per_seed, samples = {}, []
    for i, seed in enumerate(seeds):  # perplexity uses fixed windows, not the sampling seed: measured once
        per_seed[seed], seed_samples = evaluate_policy(policy, tok, world_dir, reference,
                                                       reward_model, ppl_dir if i == 0 else None, cfg.temperature,
                                                       cfg.max_new_tokens, seed, cfg.n_train, judge_fn=judge_fn)
        samples += seed_samples
        if "heldout_ppl" in per_seed[seeds[0]]:
            per_seed[seed]["heldout_ppl"] = per_seed[seeds[0]]["heldout_ppl"]
    name = os.path.basename(os.path.dirname(os.path.abspath(cfg.checkpoint)))
    result = {"checkpoint": cfg.checkpoint, "gold_judge": cfg.gold_judge or "world",
              "reference": ref_path if reference else None, "reward_model": rm_path if reward_model else None}
    if len(seeds) == 1:
        metrics = per_seed[seeds[0]]
        print(format_table({name: metrics}))
    else:  # the sampling noise: the same model and prompts, one evaluation per seed
        metrics, std = mean_and_std(list(per_seed.values()))
        print(format_table({**{f"seed {s}": m for s, m in per_seed.items()}, "mean": metrics, "std": std}))
        result.update({"seeds": seeds, "std": std, "per_seed": {str(s): m for s, m in per_seed.items()}})
    by_category = {f"{SPLIT_NAMES.get(split, split)}: {category}": {"gold": round(gold, 4), "samples": n}
                   for (split, category), (gold, n) in sorted(gold_by_category(samples).items())}
    print("\nmean gold per prompt category (samples of all seeds pooled)")
    print("\n".join(f"  {k:<30}{v['gold']:>8.3f}{v['samples']:>6}" for k, v in by_category.items()))
    result["gold_by_category"] = by_category
    write_json(output, {**result, "metrics": metrics})
    print(f"metrics written to {output}")
    return metrics
