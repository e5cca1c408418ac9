"""The evaluation harness: deterministic for a seed, zero KL against itself, sane ranges."""

import math
import os

import pytest
import torch

from minirlhf.config import ModelConfig, WorldConfig
from minirlhf.evaluate import eval_prompt_rows, evaluate_policy, forum_eval, gold_by_category
from minirlhf.model import GPT, ScalarModel
from minirlhf.tokenizer import Tokenizer
from minirlhf.world.build import run as build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    build_world(WorldConfig(preset="micro", out_dir=str(out)))
    world_dir = os.path.join(out, "micro", "world")
    text = open(os.path.join(world_dir, "corpus.txt")).read()
    tok = Tokenizer.train(text, 512)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=tok.n_vocab))
    return world_dir, tok, model


def test_kl_to_itself_is_zero_and_metrics_in_range(world):
    world_dir, tok, model = world
    rm = ScalarModel(model)
    metrics, samples = evaluate_policy(model, tok, world_dir, reference=model, reward_model=rm,
                                       max_new_tokens=12, n_train=20)
    assert abs(metrics["kl_k1"]) < 1e-6 and abs(metrics["kl_k3"]) < 1e-6
    for k in ("fact_acc_train", "refusal_sft_unsafe", "over_refusal", "flattery_rate", "eos_rate"):
        assert math.isnan(metrics[k]) or 0.0 <= metrics[k] <= 1.0, k
    assert -1.0 <= metrics["gold"] <= 1.0
    assert len(samples) == metrics["n_prompts"] and all("response" in s and "gold" in s for s in samples)
    held = [s for s in samples if s["split"] == "eval"]
    assert metrics["gold"] == pytest.approx(sum(s["gold"] for s in held) / len(held))


def test_kl_is_positive_for_a_different_policy(world):
    world_dir, tok, model = world
    torch.manual_seed(1)
    other = GPT(model.config)
    metrics, _ = evaluate_policy(other, tok, world_dir, reference=model, max_new_tokens=12, n_train=10)
    assert metrics["kl_k3"] > 0.01


def test_heldout_kl_is_the_mean_over_heldout_prompts_only(world):
    """kl_k1_heldout / kl_k3_heldout average the held-out rows (the prompts of `gold`); kl_k1 / kl_k3 every row."""
    world_dir, tok, model = world
    torch.manual_seed(1)
    other = GPT(model.config)
    metrics, samples = evaluate_policy(other, tok, world_dir, reference=model, max_new_tokens=12, n_train=10)
    held = [s for s in samples if s["split"] == "eval"]
    assert 0 < len(held) < len(samples)
    for k in ("kl_k1", "kl_k3"):
        assert metrics[f"{k}_heldout"] == pytest.approx(sum(s[k] for s in held) / len(held), rel=1e-9)
        assert metrics[k] == pytest.approx(sum(s[k] for s in samples) / len(samples), rel=1e-9)
    assert metrics["kl_k1_heldout"] != pytest.approx(metrics["kl_k1"], rel=1e-6)  # the two really differ here


def test_deterministic_for_a_seed(world):
    world_dir, tok, model = world
    a, sa = evaluate_policy(model, tok, world_dir, max_new_tokens=10, n_train=10, seed=3)
    b, sb = evaluate_policy(model, tok, world_dir, max_new_tokens=10, n_train=10, seed=3)
    c, sc = evaluate_policy(model, tok, world_dir, max_new_tokens=10, n_train=10, seed=4)
    assert a == b and [s["response"] for s in sa] == [s["response"] for s in sb]
    assert [s["response"] for s in sa] != [s["response"] for s in sc]


def test_sampling_seed_does_not_change_the_prompts(world):
    """`--seeds` measures sampling noise: every sampling seed evaluates the same prompts, training-split
    sample included (the fixed one of `eval_prompt_rows`' default)."""
    world_dir, tok, model = world
    fixed = [r["prompt"] for r in eval_prompt_rows(world_dir, 10)]
    assert any(r["split"] == "train" for r in eval_prompt_rows(world_dir, 10))
    for seed in (3, 4):
        _, samples = evaluate_policy(model, tok, world_dir, max_new_tokens=4, n_train=10, seed=seed)
        assert [s["prompt"] for s in samples] == fixed, seed


def test_greedy_kl_is_finite_and_zero_against_itself(world):
    """temperature 0 (greedy) measures the policy with its untempered distribution: no division by zero."""
    world_dir, tok, model = world
    same, _ = evaluate_policy(model, tok, world_dir, reference=model, temperature=0.0, max_new_tokens=8, n_train=10)
    assert abs(same["kl_k1"]) < 1e-6 and abs(same["kl_k3"]) < 1e-6
    torch.manual_seed(1)
    other = GPT(model.config)
    diff, _ = evaluate_policy(other, tok, world_dir, reference=model, temperature=0.0, max_new_tokens=8, n_train=10)
    assert math.isfinite(diff["kl_k1"]) and math.isfinite(diff["kl_k3"]) and diff["kl_k3"] > 0.01


def test_forum_eval_runs_on_a_base_model(world):
    world_dir, tok, model = world
    metrics, samples = forum_eval(model, tok, world_dir, max_new_tokens=10)
    assert set(metrics) == {"forum_gold", "forum_unsafe_refusal", "forum_fact_acc"}
    assert all("\n" not in s["response"] for s in samples)  # the answer is cut at the end of the line


def test_gold_by_category_by_hand():
    samples = [{"split": "eval", "category": "fact", "gold": 1.0}, {"split": "eval", "category": "fact", "gold": 0.0},
               {"split": "train", "category": "fact", "gold": -0.5}, {"prompt": "user's own", "gold": 0.25}]
    assert gold_by_category(samples) == {("eval", "fact"): (0.5, 2), ("train", "fact"): (-0.5, 1),
                                         ("unknown", "unknown"): (0.25, 1)}


def test_kl_is_that_of_the_policy_as_sampled(world):
    """At temperature T the KL is KL(pi_T || reference): the same as for a copy whose LM head is W / T,
    sampled at T = 1 (frontier.tempered), and no longer 0 for the reference against itself."""
    from minirlhf.frontier import tempered

    world_dir, tok, model = world
    a, sa = evaluate_policy(model, tok, world_dir, reference=model, temperature=0.5, max_new_tokens=12, n_train=10)
    b, sb = evaluate_policy(tempered(model, 0.5), tok, world_dir, reference=model, max_new_tokens=12, n_train=10)
    assert [s["response"] for s in sa] == [s["response"] for s in sb]
    assert a["kl_k1"] == pytest.approx(b["kl_k1"], abs=1e-5) and a["kl_k3"] == pytest.approx(b["kl_k3"], abs=1e-5)
    assert a["kl_k3"] > 0.01  # a sharper policy is a different policy
