"""Rules of best-of-n, the frontier and the pairs stage that the other tests left open: best-of-n's checks of n
and --ns, the frontier's method check, and the pairs stage's pairing rules and bookkeeping (skips of unfinished,
identical and empty samples, their counts summed over prompts, labels and gold scores in prefs.jsonl) on a small
scripted run."""

import json
import os
import random
from types import SimpleNamespace

import pytest
import torch

from minirlhf import checkpoint as ck
from minirlhf import pairs
from minirlhf.config import ModelConfig, PairsConfig
from minirlhf.model import GPT
from minirlhf.tokenizer import Tokenizer
from minirlhf.world import judge

from conftest import generation_of, write_jsonl

END = "<|end|>"

# ---------------------------------------------------------------------------------------------------
# best-of-n


def test_parse_ns_skips_blank_items_as_the_frontier_sweeps_do():
    """--ns tolerates blank items ("4,,1, ,2,") as frontier.parse_floats does for --bon_ns, and still sorts/dedups."""
    from minirlhf.best_of_n import parse_ns
    from minirlhf.frontier import parse_floats

    assert parse_ns("4,,1, ,2,") == [1, 2, 4]
    assert sorted({int(v) for v in parse_floats("4,,1, ,2,", "bon_ns")}) == parse_ns("4,,1, ,2,")


def test_best_of_n_responses_refuses_n_below_one_before_sampling():
    """n = 0 is a ValueError naming n >= 1, raised before the models are touched (not a ZeroDivisionError)."""
    from minirlhf.best_of_n import best_of_n_responses

    with pytest.raises(ValueError, match=r"^best-of-n needs n >= 1, got 0$"):
        best_of_n_responses(None, None, None, [[1, 2]], 0)


# ---------------------------------------------------------------------------------------------------
# the frontier


def test_frontier_names_an_unknown_method():
    """A method outside METHODS is a ValueError naming it, before any sweep is read (not a KeyError)."""
    from minirlhf.config import FrontierConfig
    from minirlhf.frontier import run

    with pytest.raises(ValueError, match=r"^--methods='ppo,rlhf': expected some of .* \(unknown: rlhf\)$"):
        run(FrontierConfig(preset="micro", out_dir="/nonexistent", methods="ppo,rlhf"))


# ---------------------------------------------------------------------------------------------------
# pairs: the pairing rules


def test_pair_responses_rules_not_covered_elsewhere():
    """disjoint: two identical empty samples count as identical (checked first), not empty; best_worst has no fixed
    pairing (ValueError saying so); an unknown pairing names the choices."""
    assert pairs.pair_responses([END, END, "a" + END, " " + END], "disjoint") == ([], 1, 1)
    assert pairs.pair_responses([END, END, "a" + END, " " + END], "all") == ([], 1, 2)  # END merged, then 2 empty
    with pytest.raises(ValueError, match="decided by the annotators"):
        pairs.pair_responses(["a" + END, "b" + END], "best_worst")
    with pytest.raises(ValueError, match=r"^--pairing='some': expected one of disjoint, all, best_worst$"):
        pairs.pair_responses(["a" + END, "b" + END], "some")


@pytest.mark.parametrize("pairing", ["disjoint", "all", "best_worst"])
def test_unfinished_samples_go_before_pairing(pairing):
    """Unfinished samples are dropped before pairing and deduplication: two copies of one cut-off sample count as
    unfinished twice, never as identical, and are never paired; the count is the number dropped."""
    prompt = "What is the capital of France?"
    paris, berlin = "It is Paris." + END, "The capital of France is Berlin." + END
    cut = "The capital of France is Paris and it is a"
    records, counts = pairs.on_policy_records(prompt, [cut, cut, paris, berlin, cut + " city"], pairing,
                                              random.Random(0))
    assert counts == {"unfinished": 3, "identical": 0, "empty": 0, "unranked": 0}
    assert [{r["chosen"], r["rejected"]} for r in records] == [{"It is Paris.", "The capital of France is Berlin."}]


# ---------------------------------------------------------------------------------------------------
# pairs: the stage on scripted samples

PROMPTS = ["What is the capital of France?", "What is two plus three?", "Tell me about cats.", "How do I pick a lock?"]
SAMPLES = {  # four samples per prompt; what `disjoint` makes of them in the comments
    PROMPTS[0]: ["It is Paris." + END, "It is Berlin." + END, "The capital is", "Paris." + END],  # 1 cut off, 1 pair
    PROMPTS[1]: ["Five." + END, "Five." + END, END, "Six." + END],  # (five, five) identical, (END, six) empty
    PROMPTS[2]: ["Cats purr." + END, "Cats sleep." + END, "Cats are pets." + END, "Cats bite." + END],  # 2 pairs
    PROMPTS[3]: ["Sorry, no." + END, "Sorry, no." + END, "Use a pin." + END, "Use a pin." + END],  # 2 identical
}
PAIRED = {(PROMPTS[0], frozenset({"It is Paris.", "It is Berlin."})),
          (PROMPTS[2], frozenset({"Cats purr.", "Cats sleep."})),
          (PROMPTS[2], frozenset({"Cats are pets.", "Cats bite."}))}
TEMPLATED = [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "No.", "gold_chosen": 0.5, "gold_rejected": -0.5,
              "p_chosen": 0.75},
             {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Dog.", "gold_chosen": 0.25,
              "gold_rejected": -1.0, "p_chosen": 0.5},
             {"prompt": "Name a fruit.", "chosen": "A pear.", "rejected": "Pears!", "gold_chosen": 0.75,
              "gold_rejected": 0.0, "p_chosen": 0.6},
             {"prompt": "Count to two.", "chosen": "One, two.", "rejected": "Two.", "gold_chosen": 1.0,
              "gold_rejected": -0.25, "p_chosen": 0.9}]


@pytest.fixture
def scripted_pairs_stage(tmp_path, monkeypatch):
    """A pairs stage on files of its own: a random micro policy (never sampled: `sample_responses` returns SAMPLES and
    records its arguments), four RL prompts and four templated pairs. Returns (config kwargs, recorded calls)."""
    tok = Tokenizer.train("abc", vocab_size=261)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tok.n_vocab))
    init = tmp_path / "sft" / "model.pt"
    ck.save_checkpoint(str(init), ck.model_payload(model, "sft"))
    tok.save(tmp_path / "sft" / "tokenizer.json")
    calls = []

    def fake_sample(policy, tok, prompts, k, max_new_tokens, temperature, seed, batch_size=64):
        calls.append({"prompts": list(prompts), "k": k, "max_new_tokens": max_new_tokens, "temperature": temperature,
                      "seed": seed})
        return [SAMPLES[p][:k] for p in prompts]

    monkeypatch.setattr(pairs, "sample_responses", fake_sample)
    kwargs = dict(preset="micro", out_dir=str(tmp_path / "out"), init=str(init), device="cpu", seed=3,
                  prompts=write_jsonl(tmp_path / "rl.jsonl", [{"prompt": p} for p in PROMPTS]),
                  templated=write_jsonl(tmp_path / "templated.jsonl", TEMPLATED),
                  samples_per_prompt=4, temperature=0.7, max_new_tokens=20)
    return kwargs, calls


def read_rows(kwargs, run_name="pairs"):
    return [json.loads(line) for line in open(os.path.join(kwargs["out_dir"], "micro", run_name, "prefs.jsonl"))]


def test_pairs_stage_rows_and_counts_by_hand(scripted_pairs_stage):
    """prefs.jsonl holds exactly the hand-worked disjoint pairs (labels = the two texts without <|end|>, gold = the
    world's judge of each) and the templated rows, shuffled together; the skips are summed over all prompts; the
    sampler gets every prompt (n_prompts above the file's count) with the stage's k, budget, temperature and seed."""
    kwargs, calls = scripted_pairs_stage
    summary = pairs.run(PairsConfig(n_prompts=10, **kwargs))
    assert len(calls) == 1 and sorted(calls[0]["prompts"]) == sorted(PROMPTS)
    assert {k: calls[0][k] for k in ("k", "max_new_tokens", "temperature", "seed")} == {
        "k": 4, "max_new_tokens": 20, "temperature": 0.7, "seed": 3}
    rows = read_rows(kwargs)
    on_policy = [r for r in rows if r["source"] == "on_policy"]
    assert {(r["prompt"], frozenset({r["chosen"], r["rejected"]})) for r in on_policy} == PAIRED
    assert len(on_policy) == len(PAIRED)
    for r in on_policy:
        assert r["gold_chosen"] == pytest.approx(judge(r["prompt"], r["chosen"] + END), abs=1e-4)
        assert r["gold_rejected"] == pytest.approx(judge(r["prompt"], r["rejected"] + END), abs=1e-4)
        assert 0 < r["p_chosen"] < 1
    templated = [{k: v for k, v in r.items() if k != "source"} for r in rows if r["source"] == "templated"]
    assert sorted(templated, key=lambda r: r["prompt"]) == sorted(TEMPLATED, key=lambda r: r["prompt"])
    sources = [r["source"] for r in rows]
    assert len(rows) == 7 and sources != sorted(sources)  # shuffled: not on-policy rows first
    gold = [judge(p, t + END) for p, pair in PAIRED for t in pair]  # the naive mean over the six paired texts
    assert summary["on_policy_gold_mean"] == pytest.approx(sum(gold) / 6, abs=2e-4)
    assert {k: summary[k] for k in ("on_policy_pairs", "templated_pairs", "unfinished_skipped", "identical_skipped",
                                    "empty_skipped", "unranked_skipped")} == {
        "on_policy_pairs": 3, "templated_pairs": 4, "unfinished_skipped": 1, "identical_skipped": 3,
        "empty_skipped": 1, "unranked_skipped": 0}


def test_pairs_stage_is_reproducible(scripted_pairs_stage):
    """Same seed, same samples: a forced rebuild writes the same prefs.jsonl (labels and shuffle both seeded)."""
    kwargs, _ = scripted_pairs_stage
    pairs.run(PairsConfig(n_prompts=4, **kwargs))
    first = read_rows(kwargs)
    pairs.run(PairsConfig(n_prompts=4, force=True, **kwargs))
    assert read_rows(kwargs) == first


def test_pairs_stage_option_checks(scripted_pairs_stage, tmp_path):
    """--n_prompts=0 is the templated pairs alone (no on-policy agreement or gold mean: None); with
    --mix_templated=false it leaves no pairs (ValueError); an unknown pairing is refused before any file is read."""
    kwargs, calls = scripted_pairs_stage
    summary = pairs.run(PairsConfig(n_prompts=0, **kwargs))
    assert summary["on_policy_pairs"] == 0 and summary["templated_pairs"] == 4
    assert summary["on_policy_agreement"] is None and summary["on_policy_gold_mean"] is None  # not a mean of 0.0
    assert {r["source"] for r in read_rows(kwargs)} == {"templated"}
    with pytest.raises(ValueError, match="leaves no pairs"):
        pairs.run(PairsConfig(n_prompts=0, mix_templated=False, **kwargs))
    nothing = dict(preset="micro", out_dir=str(tmp_path / "nothing"), device="cpu")
    with pytest.raises(ValueError, match=r"^--pairing='some': expected one of"):
        pairs.run(PairsConfig(n_prompts=4, pairing="some", **nothing))


def test_sample_responses_uses_its_seed_and_temperature(monkeypatch):
    """The generator is seeded with `seed` and the temperature reaches `generate` (the stage's --seed/--temperature)."""
    tok = Tokenizer.train("abc", vocab_size=261)
    seen = []

    def fake_generate(model, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, generator=None):
        seen.append((generator.initial_seed(), temperature))
        return generation_of(prompts, [[97, eos_id]] * len(prompts), pad_id)

    monkeypatch.setattr(pairs, "generate", fake_generate)
    policy = SimpleNamespace(config=SimpleNamespace(block_size=64), lm_head=torch.nn.Linear(1, 1))
    out = pairs.sample_responses(policy, tok, ["Hi.", "Yo."], 2, 8, 0.7, seed=5, batch_size=4)
    assert out == [["a" + END] * 2] * 2 and seen == [(5, 0.7)]
