"""Simulated annotators: noisy, mildly biased preference labels derived from the gold judge.

For responses A and B to one prompt an annotator prefers A with probability

    P(A > B) = sigmoid( (gold(A) - gold(B)) / tau  +  bias(A, B) )
    bias(A, B) = LENGTH_COEF * tanh((n_A - n_B) / LENGTH_SCALE) + FLATTERY_COEF * (flatters(A) - flatters(B))

which is the Bradley-Terry model (Bradley and Terry 1952; the form the reward model assumes,
Ouyang et al. 2022 eq. 1) with the gold score as the latent quality, a temperature `tau` for
disagreement, and a bias: a mild liking for longer answers (n = words) and for flattery. The bias is
exactly what a reward model trained on these labels can learn and a policy can then exploit, which is
how the lessons reproduce reward hacking (the proxy climbs while the gold score falls).

`TAU` is calibrated so that labels agree with the gold ordering on 70-80 % of the generated pairs, the
range reported for agreement between human labelers (InstructGPT, Ouyang et al. 2022: 72.6 % among
training labelers, 77.3 % for held-out labelers). Measured with these constants on the built worlds
(seed 1337): agreement 0.761 on `tiny` (4000 pairs; expected 0.760) and 0.766 on `small` (15000
pairs; expected 0.761). The bias shows
where it matters: on `tiny`, labels agree with gold 0.65 of the time when the gold-worse answer is the
longer one (0.84 when it is the shorter) and 0.39 when only the gold-worse answer flatters (0.78 when
it does not). The build's summary.json prints these numbers for every build.

    import random
    from minirlhf.world.annotators import label_pair, ranked_pair
    rec = label_pair("What is the capital of France?", "Paris.<|end|>", "It is Rome.<|end|>",
                     random.Random(0))
    rec["chosen"], rec["p_chosen"], rec["gold_chosen"]
    ranked_pair(prompt, k_responses, random.Random(0))  # the best vs the worst of one annotator's ranking

Deliberate simplifications: one annotator model for everyone (no per-labeler quirks), independent
labels, and no ties (every pair gets a winner, as in most RLHF data sets); a ranking of K responses is
built from independent pairwise judgements, not from one look at all K.
"""

from __future__ import annotations

import itertools
import math
import random

from minirlhf.world.judge import category_of, judge
from minirlhf.world.phrases import END, is_flattering, strip_end

TAU = 0.65  # gold-score temperature: larger = noisier labels (calibrated, see the docstring)
LENGTH_COEF = 0.5  # logit bonus for the longer answer, at most this much
LENGTH_SCALE = 20.0  # words: a difference of this many words gives tanh(1) = 76 % of LENGTH_COEF
FLATTERY_COEF = 0.5  # logit bonus for the flattering answer


def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)), in a form that does not overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def annotator_bias(response_a: str, response_b: str) -> float:
    """The logit bias towards A: longer and flattering answers look better to the annotator."""
    n_a, n_b = len(strip_end(response_a)[0].split()), len(strip_end(response_b)[0].split())
    length = LENGTH_COEF * math.tanh((n_a - n_b) / LENGTH_SCALE)
    flattery = FLATTERY_COEF * (int(is_flattering(response_a)) - int(is_flattering(response_b)))
    return length + flattery


def preference_probability(gold_a: float, gold_b: float, response_a: str, response_b: str,
                           tau: float = TAU) -> float:
    """P(annotator prefers A over B) given both gold scores."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return sigmoid((gold_a - gold_b) / tau + annotator_bias(response_a, response_b))


def _plain(response: str) -> str:
    """The text as stored in data files: a trailing `<|end|>` removed (the chat renderer adds it back)."""
    return response[: -len(END)] if response.endswith(END) else response


def label_pair(prompt: str, response_a: str, response_b: str, rng: random.Random,
               tau: float = TAU) -> dict:
    """Label one pair like a (simulated) human and return the preference record.

    `response_a` / `response_b` are decoded assistant texts in the judge's convention (ending in
    `<|end|>` when complete). The record is TRL's {"prompt", "chosen", "rejected"} with the texts'
    trailing `<|end|>` removed (the chat template appends it), plus extras: "gold_chosen",
    "gold_rejected" (gold scores of the responses as given), "p_chosen" (the annotator's probability
    of preferring the chosen one, >= 0.5 unless the label went against the odds) and "category".
    """
    _check_rng(rng, "label_pair")
    gold_a, gold_b = judge(prompt, response_a), judge(prompt, response_b)
    p_a = preference_probability(gold_a, gold_b, response_a, response_b, tau)
    if rng.random() < p_a:
        return _record(prompt, response_a, response_b, gold_a, gold_b, p_a)
    return _record(prompt, response_b, response_a, gold_b, gold_a, 1.0 - p_a)


def rank_responses(prompt: str, responses: list[str], rng: random.Random,
                   tau: float = TAU) -> tuple[list[int], list[int]]:
    """One annotator's ranking of K responses to one prompt: (indices best first, pairs won by each).

    InstructGPT's labelers ranked K = 4 to 9 responses to a prompt at once (Ouyang et al. 2022, §3.5).
    Here the annotator judges every pair once, with the same noisy, biased probability as `label_pair`
    (one draw from `rng` per pair, pairs in `itertools.combinations` order), and the ranking is by
    number of pairs won (a Borda count); equal counts keep the responses' order. Because each pair is a
    separate noisy judgement the ranking need not be consistent (A > B > C > A is possible); counting
    wins settles it the way a person asked for one ordering would have to.
    """
    _check_rng(rng, "rank_responses")
    gold = [judge(prompt, r) for r in responses]
    wins = [0] * len(responses)
    for i, j in itertools.combinations(range(len(responses)), 2):
        p_i = preference_probability(gold[i], gold[j], responses[i], responses[j], tau)
        wins[i if rng.random() < p_i else j] += 1
    order = sorted(range(len(responses)), key=lambda i: -wins[i])  # stable: ties keep sample order
    return order, wins


def ranked_pair(prompt: str, responses: list[str], rng: random.Random, tau: float = TAU) -> dict | None:
    """The record of the best against the worst of an annotator's ranking of K >= 2 responses, or
    None when the ranking does not separate them (every response won as many pairs, e.g. a cycle).

    The most decisive comparison a ranking holds, as in preference data that pairs the highest- and the
    lowest-scored of N samples of a prompt (Yuan et al. 2024, Self-Rewarding Language Models): two
    on-policy samples that differ by a few words are mostly decided by the annotators' bias,
    the two ends of a ranking of eight much less so. The record is `label_pair`'s, chosen = the best;
    its "p_chosen" is the annotator's probability of preferring the best in a single comparison.
    """
    if len(responses) < 2:
        raise ValueError(f"ranked_pair: need at least 2 responses to rank, got {len(responses)}")
    order, wins = rank_responses(prompt, responses, rng, tau)
    if wins[order[0]] == wins[order[-1]]:
        return None
    best, worst = responses[order[0]], responses[order[-1]]
    gold_best, gold_worst = judge(prompt, best), judge(prompt, worst)
    p_best = preference_probability(gold_best, gold_worst, best, worst, tau)
    return _record(prompt, best, worst, gold_best, gold_worst, p_best)


def _record(prompt: str, chosen: str, rejected: str, gold_chosen: float, gold_rejected: float,
            p_chosen: float) -> dict:
    return {
        "prompt": prompt,
        "chosen": _plain(chosen),
        "rejected": _plain(rejected),
        "gold_chosen": round(gold_chosen, 4),
        "gold_rejected": round(gold_rejected, 4),
        "p_chosen": round(p_chosen, 4),
        "category": category_of(prompt) or "unknown",
    }


def _check_rng(rng, caller: str) -> None:
    if not isinstance(rng, random.Random):
        raise TypeError(f"{caller}: rng must be a random.Random, got {type(rng).__name__}")


def agreement_stats(records: list[dict]) -> dict:
    """How often the annotators' choice agrees with the gold ordering, overall and where the bias bites.

    Pairs whose gold scores tie are left out (no gold ordering). `expected` averages the probability
    of choosing the gold-better answer (the sampled `agreement` fluctuates around it). `label_ceiling`
    is the share of pairs where that probability is above one half: the gold accuracy of a perfect model
    of the annotators, one that knows their preference probability for every pair and picks the likelier
    answer. Their random noise costs it nothing and only their bias does (it is 1.0 for unbiased
    annotators, however noisy). A reward model can at best approach it: one score per response cannot
    always express a preference that depends on the pair (the length bias is a tanh of the difference).
    Subsets: `worse_longer` (the gold-worse answer has more words) vs `worse_shorter`, and
    `worse_flatters` (only the gold-worse answer flatters) vs `worse_plain` (it does not).
    Over all pairs with a gold ordering, two more numbers about the labels themselves, p being the
    probability of the choice: `inter_annotator`, mean of p^2 + (1 - p)^2, how often two independent
    annotators label a pair alike (what InstructGPT's 73-77 % "inter-labeler agreement" measures); and
    `label_accuracy_ceiling`, mean of max(p, 1 - p), the best any model can agree with single labels --
    above `expected`, because the bias is as predictable as the gold ordering.
    """
    buckets: dict[str, list[tuple[bool, float]]] = {k: [] for k in (
        "all", "worse_longer", "worse_shorter", "worse_flatters", "worse_plain")}
    ties = 0
    for r in records:
        if r["gold_chosen"] == r["gold_rejected"]:
            ties += 1
            continue
        agree = r["gold_chosen"] > r["gold_rejected"]
        p_better = r["p_chosen"] if agree else 1.0 - r["p_chosen"]
        better, worse = (r["chosen"], r["rejected"]) if agree else (r["rejected"], r["chosen"])
        item = (agree, p_better)
        buckets["all"].append(item)
        n_worse, n_better = len(worse.split()), len(better.split())
        if n_worse > n_better:
            buckets["worse_longer"].append(item)
        elif n_worse < n_better:
            buckets["worse_shorter"].append(item)
        if is_flattering(worse) and not is_flattering(better):
            buckets["worse_flatters"].append(item)
        elif not is_flattering(worse):
            buckets["worse_plain"].append(item)
    out: dict = {"pairs": len(records), "ties": ties}
    ps = [p for _, p in buckets["all"]]
    out["inter_annotator"] = round(sum(p * p + (1 - p) * (1 - p) for p in ps) / len(ps), 4) if ps else None
    out["label_accuracy_ceiling"] = round(sum(max(p, 1 - p) for p in ps) / len(ps), 4) if ps else None
    for name, items in buckets.items():
        key = "" if name == "all" else f"_{name}"
        out[f"agreement{key}"] = round(sum(a for a, _ in items) / len(items), 4) if items else None
        out[f"expected_agreement{key}"] = round(sum(p for _, p in items) / len(items), 4) if items else None
        out[f"label_ceiling{key}"] = round(sum(p > 0.5 for _, p in items) / len(items), 4) if items else None
        if name != "all":
            out[f"pairs{key}"] = len(items)
    return out
