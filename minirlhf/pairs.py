"""On-policy preference pairs: sample responses from the SFT model and let the simulated annotators label them.

Run it:
    minirlhf pairs --preset tiny        # writes out/tiny/pairs/prefs.jsonl (+ config.json, summary.json)
    minirlhf pairs --preset tiny --n_prompts=1000 --samples_per_prompt=4 --pairing=all   # more on-policy pairs
    # one ranked pair per prompt, on-policy only, into out/tiny/pairs_ranked/; then DPO on those alone:
    minirlhf pairs --preset tiny --n_prompts=1000 --samples_per_prompt=8 --pairing=best_worst
                   --mix_templated=false --run_name=pairs_ranked
    minirlhf dpo --preset tiny --prefs=out/tiny/pairs_ranked/prefs.jsonl --run_name=dpo_ranked

InstructGPT's reward model was trained on comparisons of the SFT model's *own* samples (Ouyang et al.
2022, §3.4): the RM must learn to rank what the policy actually produces, not only hand-written
responses. So, top to bottom:
  1. sample `samples_per_prompt` responses per RL prompt from the SFT model (KV-cache engine);
  2. pair distinct, finished responses of the same prompt (a sample cut off before `<|end|>` is left
     out and counted: it would be trained with `<|end|>` appended) and label each pair with the world's annotators
     (`world.label_pair`: noisy, with a mild liking for longer and flattering answers) -- the same
     labelling code as the templated pairs;
  3. mix them with the world's templated pairs (controlled styles: ideal, verbose, wrong, rude, ...)
     and write one JSONL in TRL's {"prompt","chosen","rejected"} format, each row with its gold scores,
     the annotator's probability and its `source` ("on_policy" or "templated").

`--pairing=all` labels every pair of a prompt's distinct samples (K choose 2, as InstructGPT) instead of
K // 2 disjoint pairs. What more on-policy pairs buy, measured on tiny (one seed per run; PPO's seed-to-seed
spread is a few hundredths; the SFT model's held-out gold is 0.23): the default 600 prompts x 2 samples
give 294 on-policy pairs, and with the resulting reward model PPO reaches a held-out gold of 0.06, DPO
0.18; `--n_prompts=1000 --samples_per_prompt=4 --pairing=all` gives 1632 pairs (19 s), PPO 0.10, DPO
0.21; `--n_prompts=1000 --samples_per_prompt=8` gives 1977 pairs (38 s) and PPO 0.17. Better, but still
below SFT: the reward model's accuracy on the policy's own samples stays near chance (0.50-0.56;
reward.py measures it).

`--pairing=best_worst` keeps one pair per prompt: the best against the worst of one annotator's ranking
of the K samples (`world.ranked_pair`: every pair judged once, ranked by wins). Two samples of one prompt
that differ by a few words are decided mostly by the annotators' bias; the two ends of a ranking of eight
much less so. Measured on tiny (1000 prompts x 8 samples: 749 pairs in 55 s; the label agrees with the gold
ordering 0.72 of the time, against 0.60 for the default's single pairs). Held-out gold, mean +- std over
evaluation seeds 1-3 (`minirlhf eval --seeds=1,2,3`; SFT: 0.24 +- 0.04), and KL over all evaluation
prompts (measured when each evaluation seed still drew its own sample of training-split prompts; with
today's fixed sample they move by a few per cent, e.g. 0.56 -> 0.59 for the first PPO run below):
  * DPO (beta 0.1) on these pairs alone (`--mix_templated=false`): 0.28 +- 0.05 at KL 0.9 (a second set
    of pairs, other sampling and labelling seeds: 0.27 +- 0.07; another DPO training seed: 0.28 +- 0.05),
    where DPO on the default mix loses gold
    (0.14 +- 0.06) and so does DPO on these pairs mixed with the templated ones (0.15, seed 0 alone): the
    templated pairs, not DPO, are what costs gold there. The gain over SFT is within the seed noise.
  * mixed with the templated pairs, for the reward model: PPO against it 0.17 +- 0.04 at KL 0.8 (default:
    0.10 +- 0.01 at KL 1.5), about what more disjoint pairs give (above); the reward model's accuracy on
    the policy's own samples is still at chance (0.53 held-out, 0.46 training prompts). Cleaner labels do
    not fix it: the reward model does not generalise to what the policy writes.
  * for a reward model trained on these pairs alone (`minirlhf reward --prefs=out/tiny/pairs_ranked/prefs.jsonl
    --run_name=reward_ranked`): it never saw the templated styles (validation gold accuracy 0.62), ranks
    the policy's own samples only a little better (0.55 held-out, decisive pairs 0.59) and has no taste
    for length (correlation with length 0.04). PPO against it: 0.31 +- 0.03 at KL 0.56 (another PPO
    training seed: 0.24 +- 0.06 at KL 0.80; a second set of pairs: 0.27 +- 0.03 at KL 0.68; 150
    iterations instead of 60: 0.25 at KL 1.3, past the peak), the one reward model here PPO does not
    lose gold against. Lesson 04, step 5. The same holds for GRPO against it (0.25 +- 0.02 at KL 0.87;
    against the default reward model 0.09 +- 0.05 at KL 2.3), and best-of-n by it orders 0.56 of 11,285
    held-out sample pairs as gold does (default 0.49), yet its gold still falls with n (0.26 at n = 2,
    0.12 at n = 16).
  * more of the same does not add much: 16 samples per prompt (828 pairs, label agreement 0.77) give DPO
    0.30 +- 0.07 at KL 2.0; a second round, ranked samples of the first DPO model and DPO from it with it
    as the reference (iterated DPO), 0.26 +- 0.05 at KL 2.2 to SFT, with longer answers (15.2 words
    against 13.3): each round takes a little more of the annotators' length taste. Other losses and
    settings on the same 749 pairs: IPO 0.29 +- 0.04 at KL 0.3, cDPO 0.27 at KL 0.8, RPO (`--rpo_alpha=1`)
    0.27 at KL 0.45, twice the learning rate 0.27 at KL 3.9, twice the steps 0.19 at KL 4.1.

Deliberate simplifications: a ranking is built from independent pairwise labels, not one look at all K;
identical and empty responses are not paired (both are counted in the summary, as are prompts whose
ranking does not separate its ends).
"""

from __future__ import annotations

import itertools
import os
import random

import torch

from minirlhf import checkpoint as ck
from minirlhf.chat import render_prompt
from minirlhf.common import Stopwatch, begin_writing, config_key, file_digest, resolve_device, reusable, write_json
from minirlhf.config import PairsConfig, fill_from_preset, stage_dir
from minirlhf.data import read_jsonl, read_prompts, write_jsonl
from minirlhf.engine import generate
from minirlhf.sft import stage_file, world_file
from minirlhf.tokenizer import Tokenizer

STAGE = "pairs"


@torch.no_grad()
def sample_responses(policy, tok, prompts: list[str], k: int, max_new_tokens: int, temperature: float,
                     seed: int, batch_size: int = 64) -> list[list[str]]:
    """k decoded responses per prompt (each ends with <|end|> when the model emitted it)."""
    device = policy.lm_head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    flat = [p for p in prompts for _ in range(k)]
    texts: list[str] = []
    for i in range(0, len(flat), batch_size):
        ids = [render_prompt(tok, p) for p in flat[i:i + batch_size]]
        budget = min(max_new_tokens, policy.config.block_size - max(len(x) for x in ids))
        g = generate(policy, ids, budget, tok.end_id, tok.pad_id, temperature=temperature, generator=gen)
        for row, mask in zip(g.response.tolist(), g.response_mask.tolist()):
            texts.append(tok.decode([t for t, m in zip(row, mask) if m]))
    return [texts[j * k:(j + 1) * k] for j in range(len(prompts))]


PAIRINGS = ("disjoint", "all", "best_worst")


def check_pairing(pairing: str) -> None:
    """A ValueError naming --pairing unless it is one of PAIRINGS (disjoint, all, best_worst)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"--pairing={pairing!r}: expected one of {', '.join(PAIRINGS)}")


def is_empty(response: str) -> bool:
    """No text before `<|end|>`: such a response is not a valid row in the TRL format."""
    from minirlhf.world import strip_end

    return not strip_end(response)[0].strip()


def distinct_responses(responses: list[str]) -> tuple[list[str], int, int]:
    """(distinct non-empty responses in sample order, repeats merged, empty dropped)."""
    distinct = list(dict.fromkeys(responses))  # first copies, in sample order
    kept = [r for r in distinct if not is_empty(r)]
    return kept, len(responses) - len(distinct), len(distinct) - len(kept)


def pair_responses(responses: list[str], pairing: str) -> tuple[list[tuple[str, str]], int, int]:
    """The pairs to label from one prompt's K samples: (pairs, identical skipped, empty skipped).

    disjoint: samples (1, 2), (3, 4), ... -> K // 2 pairs; a pair of two identical responses, or with an
              empty one, is skipped and counted.
    all:      every pair of distinct non-empty responses, K choose 2 at most (InstructGPT, Ouyang et al.
              2022 §3.5, ranked K = 4 to 9 responses per prompt and trained on all the pairs); a repeated
              sample is merged into its first copy and counted as identical, an empty one is counted as empty.
    (best_worst is not a fixed pairing: which pair it keeps depends on the annotator; see `on_policy_records`.)
    """
    check_pairing(pairing)
    if pairing == "disjoint":
        pairs, identical, empty = [], 0, 0
        for a, b in zip(responses[0::2], responses[1::2]):
            if a == b:
                identical += 1
            elif is_empty(a) or is_empty(b):
                empty += 1
            else:
                pairs.append((a, b))
        return pairs, identical, empty
    if pairing == "all":
        kept, identical, empty = distinct_responses(responses)
        return list(itertools.combinations(kept, 2)), identical, empty
    raise ValueError(f"pair_responses: --pairing={pairing!r} is decided by the annotators (on_policy_records)")


def is_unfinished(response: str) -> bool:
    """No `<|end|>`: the sample was cut off at max_new_tokens. The annotators would judge the cut-off text
    (the judge's no_eos term), but a stored reply is rendered with `<|end|>` appended, so its label and
    gold scores would not describe the text trained on; such samples are left out of the pairs."""
    from minirlhf.world.phrases import END

    return END not in response


def on_policy_records(prompt: str, responses: list[str], pairing: str, rng: random.Random) -> tuple[list[dict], dict]:
    """The labelled preference records from one prompt's K samples, and what was skipped.

    Unfinished samples (`is_unfinished`) are dropped first and counted; then
    disjoint / all: each pair of `pair_responses` of the rest labelled on its own (`world.label_pair`).
    best_worst:     one record per prompt, the best against the worst of one annotator's ranking of the
                    distinct non-empty samples (`world.ranked_pair`); none when fewer than two are left
                    or the ranking does not separate its ends (counted as "unranked").
    """
    from minirlhf.world import label_pair, ranked_pair

    finished = [r for r in responses if not is_unfinished(r)]
    unfinished = len(responses) - len(finished)
    if pairing == "best_worst":
        kept, identical, empty = distinct_responses(finished)
        record = ranked_pair(prompt, kept, rng) if len(kept) >= 2 else None
        records = [record] if record is not None else []
        return records, {"unfinished": unfinished, "identical": identical, "empty": empty,
                         "unranked": int(record is None)}
    pairs, identical, empty = pair_responses(finished, pairing)
    records = [label_pair(prompt, a, b, rng) for a, b in pairs]
    return records, {"unfinished": unfinished, "identical": identical, "empty": empty, "unranked": 0}


def run(cfg: PairsConfig) -> dict:
    """`minirlhf pairs`: sample responses from the SFT model, label pairs of them, mix in the templated pairs.

    Reads the policy (--init, default out/<preset>/sft/model.pt, and the tokenizer.json next to it), the RL prompts
    (--prompts, default the world's rl_prompts.jsonl: `n_prompts` of them drawn with `seed`) and the templated pairs
    (--templated, default the world's prefs.jsonl). Writes prefs.jsonl (on-policy and templated rows shuffled together,
    each with its `source`), config.json and summary.json under out/<preset>/pairs/ (or --run_name) and returns the summary: pair
    counts, the unfinished (no `<|end|>`), identical, empty and unranked responses skipped, the annotators' agreement with gold and the mean gold
    on the on-policy pairs (both None without any), `seconds`. prefs.jsonl made from the same config, inputs and code is reused
    (--force rebuilds).
    ValueError for a bad --pairing, --n_prompts < 0, --samples_per_prompt < 2, or a config that gives no pairs.
    """
    from minirlhf.evaluate import judge_inputs
    from minirlhf.world import agreement_stats

    fill_from_preset(cfg)
    check_pairing(cfg.pairing)  # before any sampling
    if cfg.n_prompts < 0:
        raise ValueError(f"--n_prompts={cfg.n_prompts}: expected >= 0 (0 = templated pairs only; -1 = the preset's)")
    if cfg.samples_per_prompt < 2:
        raise ValueError(f"--samples_per_prompt={cfg.samples_per_prompt}: expected >= 2 (an on-policy pair is two "
                         "responses to the same prompt)")
    if cfg.n_prompts == 0 and not cfg.mix_templated:
        raise ValueError("--n_prompts=0 with --mix_templated=false leaves no pairs: sample on some prompts or mix "
                         "the templated pairs in")
    out = stage_dir(cfg, cfg.run_name or STAGE)
    device = resolve_device(cfg.device)
    watch = Stopwatch()
    init = cfg.init or stage_file(cfg, "sft", "model.pt")
    prompts_path = cfg.prompts or world_file(cfg, "rl_prompts.jsonl", "--prompts")
    templated_path = cfg.templated or world_file(cfg, "prefs.jsonl", "--templated")
    key = config_key(cfg, {**{n: file_digest(p) for n, p in
                              (("init", init), ("prompts", prompts_path), ("templated", templated_path))},
                           **judge_inputs(cfg)}, __name__)  # the annotators who label the pairs are the world's code
    if (summary := reusable(out, key, cfg.force, artifacts=("prefs.jsonl",))) is not None:
        print(f"[pairs] reusing {out}/prefs.jsonl (same config, inputs and code; --force to rebuild)")
        return summary

    policy, _ = ck.load_model(init, device)
    tok = Tokenizer.load(os.path.join(os.path.dirname(init), "tokenizer.json"))
    prompts = [p[-1]["content"] for p in read_prompts(prompts_path)]
    prompts = random.Random(cfg.seed).sample(prompts, min(cfg.n_prompts, len(prompts)))
    responses = sample_responses(policy, tok, prompts, cfg.samples_per_prompt, cfg.max_new_tokens,
                                 cfg.temperature, cfg.seed)

    rng = random.Random(cfg.seed)
    on_policy, skipped = [], {"unfinished": 0, "identical": 0, "empty": 0, "unranked": 0}
    for prompt, resps in zip(prompts, responses):
        records, counts = on_policy_records(prompt, resps, cfg.pairing, rng)
        on_policy += [{**r, "source": "on_policy"} for r in records]
        skipped = {k: skipped[k] + counts[k] for k in skipped}
    templated = [{**obj, "source": "templated"} for _, obj in read_jsonl(templated_path)] if cfg.mix_templated else []
    rows = on_policy + templated
    rng.shuffle(rows)
    begin_writing(out, cfg)  # the old summary goes before the new prefs.jsonl is written
    write_jsonl(os.path.join(out, "prefs.jsonl"), rows)

    stats = agreement_stats(on_policy) if on_policy else {}
    summary = {"stage": STAGE, "key": key, "on_policy_pairs": len(on_policy), "templated_pairs": len(templated),
               "unfinished_skipped": skipped["unfinished"], "identical_skipped": skipped["identical"], "empty_skipped": skipped["empty"],
               "unranked_skipped": skipped["unranked"], "on_policy_agreement": stats.get("agreement"),
               "on_policy_gold_mean": round(sum(r["gold_chosen"] + r["gold_rejected"] for r in on_policy)
                                            / (2 * len(on_policy)), 4) if on_policy else None,
               "seconds": round(watch.seconds(), 2)}
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[pairs] {len(on_policy)} on-policy + {len(templated)} templated pairs "
          f"(annotator agreement with gold on on-policy pairs: {summary['on_policy_agreement']}); "
          f"{summary['seconds']:.0f} s")
    return summary
