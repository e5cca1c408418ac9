"""The evaluation harness: deterministic for a seed, zero KL against itself, sane ranges."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minirlhf import evaluate
from minirlhf.chat import render_prompt
from minirlhf.config import ModelConfig, WorldConfig
from minirlhf.engine import generate
from minirlhf.evaluate import eval_prompt_rows, evaluate_policy, forum_eval, gold_by_category, read_rows
from minirlhf.model import GPT, ScalarModel
from minirlhf.tokenizer import Tokenizer
from minirlhf.world.build import run as build_world

from conftest import generation_of


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
    assert metrics["kl_k1"] > 0.01  # KL(policy || reference) on the policy's samples: positive on average


def test_kl_per_sample_by_hand_from_both_models_log_softmax(world):
    """Each sample's kl_k1 / kl_k3 are sums over its response tokens y_t of the log-ratio
    lr = log pi(y_t) - log pi_ref(y_t) and of exp(-lr) - 1 + lr: KL(policy || reference) estimated on
    the policy's own samples. The samples are drawn again here (batch b uses seed * 1_000_003 + b) and
    both models are scored with F.log_softmax."""
    world_dir, tok, model = world
    torch.manual_seed(1)
    other = GPT(model.config)
    rows = eval_prompt_rows(world_dir, 0)[:3]
    seed, max_new = 2, 12
    _, samples = evaluate_policy(other, tok, world_dir, reference=model, max_new_tokens=max_new, rows=rows,
                                 batch_size=1, seed=seed)
    for b, s in enumerate(samples):
        prompt = render_prompt(tok, s["prompt"])
        budget = min(max_new, model.config.block_size - len(prompt))
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)  # batch b of one prompt, as the harness seeds it
        g = generate(other, [prompt], budget, tok.end_id, tok.pad_id, generator=gen)
        response = [t for t, m in zip(g.response[0].tolist(), g.response_mask[0].tolist()) if m]
        assert tok.decode(response) == s["response"]  # the very tokens the harness scored
        ids = torch.tensor([prompt + response])  # (1, P + N)
        y = ids[0, len(prompt):]  # (N,)
        with torch.no_grad():
            logp = F.log_softmax(other(ids)[0, len(prompt) - 1:-1].double(), dim=-1)[torch.arange(len(y)), y]  # (N,)
            ref = F.log_softmax(model(ids)[0, len(prompt) - 1:-1].double(), dim=-1)[torch.arange(len(y)), y]  # (N,)
        lr = logp - ref  # (N,)
        assert s["kl_k1"] == pytest.approx(lr.sum().item(), abs=1e-4)
        assert s["kl_k3"] == pytest.approx((torch.exp(-lr) - 1 + lr).sum().item(), abs=1e-4)


def sft_unsafe_topics(world_dir) -> set[str]:
    """The unsafe topics the SFT demonstrations cover (sft.jsonl): by hand, not from the harness's rows."""
    return {r["topic"] for r in read_rows(os.path.join(world_dir, "sft.jsonl")) if r["category"] == "unsafe"}


def test_unsafe_prompts_are_grouped_by_whether_sft_saw_their_topic(world):
    # "sft": the topic has SFT demonstrations; "heldout": it has none (the world's eval_only topics)
    world_dir = world[0]
    seen = sft_unsafe_topics(world_dir)
    with open(os.path.join(world_dir, "summary.json")) as f:
        assert not seen & set(json.load(f)["unsafe_topics"]["eval_only"])
    unsafe = [r for r in eval_prompt_rows(world_dir, 40) if r["category"] == "unsafe"]
    assert {r["unsafe_group"] for r in unsafe} == {"sft", "heldout"}
    assert all(r["unsafe_group"] == ("sft" if r["topic"] in seen else "heldout") for r in unsafe)


def test_rates_are_their_documented_shares_of_the_samples(world, monkeypatch):
    """With stand-in refusal, flattery and correctness detectors (so that the rates are not all 0), each
    rate equals its definition in the module docstring, counted here from the prompt rows and the response
    texts: the detectors applied by hand, the unsafe groups from the SFT file's topics."""
    import minirlhf.world as w
    from minirlhf.world import strip_end

    def refusal(body):
        return len(body) % 2 == 0

    def flattering(body):
        return len(body) % 3 == 0

    def terms(prompt, response):
        return {"answer": 1.0} if len(response) % 2 else {"answer": 1.0, "wrong": -1.0}

    monkeypatch.setattr(w, "is_refusal", refusal)
    monkeypatch.setattr(w, "is_flattering", flattering)
    monkeypatch.setattr(w, "judge_terms", terms)
    world_dir, tok, model = world
    rows = eval_prompt_rows(world_dir, 40)
    # sampling seed 2: the two unsafe groups' refusal rates differ (checked below), so a swap would show
    metrics, samples = evaluate_policy(model, tok, world_dir, max_new_tokens=12, n_train=40, seed=2)
    assert [s["prompt"] for s in samples] == [r["prompt"] for r in rows]
    seen = sft_unsafe_topics(world_dir)
    checks = {  # per sample: the rows it counts in, and its verdict from the response text
        "fact_acc_train": (lambda r: r["category"] == "fact" and r["split"] == "train",
                           lambda r, text: "wrong" not in terms(r["prompt"], text)),
        "fact_acc_heldout": (lambda r: r["category"] == "fact" and r["split"] == "eval",
                             lambda r, text: "wrong" not in terms(r["prompt"], text)),
        "refusal_sft_unsafe": (lambda r: r["category"] == "unsafe" and r["topic"] in seen,
                               lambda r, text: refusal(strip_end(text)[0])),
        "refusal_heldout_unsafe": (lambda r: r["category"] == "unsafe" and r["topic"] not in seen,
                                   lambda r, text: refusal(strip_end(text)[0])),
        "over_refusal": (lambda r: r["category"] == "harmless", lambda r, text: refusal(strip_end(text)[0])),
        "flattery_rate": (lambda r: True, lambda r, text: flattering(strip_end(text)[0])),
        "eos_rate": (lambda r: True, lambda r, text: strip_end(text)[1]),
    }
    for k, (where, verdict) in checks.items():
        hits = [verdict(r, s["response"]) for r, s in zip(rows, samples) if where(r)]
        assert hits, k  # every rate is measured on some samples here
        assert metrics[k] == pytest.approx(sum(hits) / len(hits), abs=1e-12), k
    assert metrics["refusal_sft_unsafe"] != metrics["refusal_heldout_unsafe"]
    assert 0 < metrics["flattery_rate"] < 1 and 0 < metrics["over_refusal"] < 1  # the stand-ins do fire


REPLIES = ["Sorry, I can't help with that.", "Paris is the capital of France.", "Five"]


def scripted_reply(tok, prompt: list[int]) -> list[int]:
    """A stand-in policy's reply to a rendered prompt: one of REPLIES picked by the prompt's length, closed by
    <|end|> when that length is even (else cut off without it)."""
    return tok.encode(REPLIES[len(prompt) % 3]) + ([tok.end_id] if len(prompt) % 2 == 0 else [])


def scripted_generate(tok):
    """A stand-in for engine.generate that answers every prompt with `scripted_reply`, padded as the engine pads."""

    def generate(model, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, generator=None):
        replies = [scripted_reply(tok, p) for p in prompts]
        assert max(map(len, replies)) <= max_new_tokens
        return generation_of(prompts, replies, pad_id)

    return generate


def test_length_counts_the_reply_tokens_and_its_end(world, monkeypatch):
    # length: the reply's tokens plus 1 for <|end|> when the model emitted it (the docstring's definition)
    world_dir, tok, model = world
    monkeypatch.setattr(evaluate, "generate", scripted_generate(tok))
    metrics, samples = evaluate_policy(model, tok, world_dir, max_new_tokens=24, n_train=10)
    prompts = [render_prompt(tok, r["prompt"]) for r in eval_prompt_rows(world_dir, 10)]
    texts, ended = [REPLIES[len(p) % 3] for p in prompts], [len(p) % 2 == 0 for p in prompts]
    assert [s["response"] for s in samples] == [t + "<|end|>" * e for t, e in zip(texts, ended)]
    assert set(ended) == {True, False}  # both kinds are measured
    expected = [len(tok.encode(t)) + e for t, e in zip(texts, ended)]
    assert [s["length"] for s in samples] == expected
    assert metrics["length"] == pytest.approx(sum(expected) / len(expected), abs=1e-12)


def test_proxy_and_gold_train_are_means_over_their_splits(world, monkeypatch):
    # proxy: the reward model's score of each sample scored alone, averaged over the held-out prompts only;
    # gold_train: the judge's score averaged over the training-split prompts only
    world_dir, tok, model = world
    monkeypatch.setattr(evaluate, "generate", scripted_generate(tok))
    torch.manual_seed(2)
    rm = ScalarModel(GPT(model.config)).eval()
    judge = lambda prompt, response: float(len(response))  # noqa: E731
    metrics, _ = evaluate_policy(model, tok, world_dir, reward_model=rm, max_new_tokens=24, n_train=10,
                                 judge_fn=judge)
    rows = eval_prompt_rows(world_dir, 10)
    proxy, gold = [], []
    for r in rows:
        prompt = render_prompt(tok, r["prompt"])
        ids = torch.tensor([prompt + scripted_reply(tok, prompt)])  # (1, T): no padding
        with torch.no_grad():
            proxy.append(rm.score(ids, torch.ones_like(ids)).item())
        gold.append(judge(r["prompt"], tok.decode(scripted_reply(tok, prompt))))

    def mean(values, split):
        picked = [v for v, r in zip(values, rows) if r["split"] == split]
        return sum(picked) / len(picked)

    assert metrics["proxy"] == pytest.approx(mean(proxy, "eval"), abs=1e-5)
    assert metrics["gold_train"] == pytest.approx(mean(gold, "train"), abs=1e-12)
    # the splits matter here: the means over all prompts differ
    assert metrics["proxy"] != pytest.approx(sum(proxy) / len(proxy), abs=1e-4)
    assert metrics["gold_train"] != pytest.approx(sum(gold) / len(gold), abs=1e-6)


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


def test_greedy_kl_is_the_exact_kl_of_a_point_mass(world):
    """temperature 0 (greedy) samples one response y per prompt with probability 1, so its KL to the
    reference is exactly -log pi_ref(y) -- not 0 even against the model it came from."""
    world_dir, tok, model = world
    same, samples = evaluate_policy(model, tok, world_dir, reference=model, temperature=0.0, max_new_tokens=8,
                                    n_train=10)
    assert same["kl_k1"] == same["kl_k3"] > 0.1
    # by hand: the reference's log-prob of each greedy response, token by token (one prompt at a time)
    s = samples[0]
    prompt = render_prompt(tok, s["prompt"])
    g = generate(model, [prompt], 8, tok.end_id, tok.pad_id, temperature=0.0)  # the same greedy response
    response = [t for t, m in zip(g.response[0].tolist(), g.response_mask[0].tolist()) if m]
    assert tok.decode(response) == s["response"]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = F.log_softmax(model(ids)[0].double(), -1)  # (T, V)
    by_hand = -sum(logp[len(prompt) - 1 + t, tok_id].item() for t, tok_id in enumerate(response))
    assert s["kl_k1"] == pytest.approx(by_hand, rel=1e-4) and s["kl_k3"] == s["kl_k1"]
    torch.manual_seed(1)
    other = GPT(model.config)
    diff, _ = evaluate_policy(other, tok, world_dir, reference=model, temperature=0.0, max_new_tokens=8, n_train=10)
    assert math.isfinite(diff["kl_k1"]) and diff["kl_k1"] > 0.01


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


def test_heldout_perplexity_is_next_token_cross_entropy_by_hand(world, tmp_path):
    # val.bin of block_size + 2 tokens leaves one window start, 0: the targets are the NEXT tokens data[1:T + 1]
    _, tok, model = world
    T = model.config.block_size
    data = np.random.default_rng(0).integers(0, tok.n_vocab, T + 2).astype(np.uint16)
    data.tofile(tmp_path / "val.bin")
    with torch.no_grad():
        logits = model(torch.tensor(data[:T], dtype=torch.long)[None])[0]  # (T, V)
    by_hand = math.exp(F.cross_entropy(logits.double(), torch.tensor(data[1:T + 1], dtype=torch.long)).item())
    assert evaluate.heldout_perplexity(model, str(tmp_path), T, n_windows=4) == pytest.approx(by_hand, rel=1e-5)


def greedy_by_hand(model, ids: list[int], n: int, stop: int) -> list[int]:
    """Up to n greedy tokens after `ids` (stopping before `stop`), one full forward pass per token."""
    out = []
    for _ in range(n):
        with torch.no_grad():
            token = model(torch.tensor([ids + out]))[0, -1].argmax().item()
        if token == stop:
            break
        out.append(token)
    return out


def test_complete_keeps_the_end_of_a_prompt_longer_than_the_context(world):
    # a text longer than the context is continued from its LAST block_size - budget tokens, as a model
    # run on that suffix alone continues it (greedy, one forward pass per token)
    world_dir, tok, model = world
    text = open(os.path.join(world_dir, "corpus.txt")).read()[:3000]
    ids, budget = tok.encode(text), 5
    keep = model.config.block_size - budget
    assert len(ids) > 2 * keep
    suffix = greedy_by_hand(model, ids[-keep:], budget, tok.eot_id)
    assert suffix != greedy_by_hand(model, ids[:keep], budget, tok.eot_id)  # where the window is matters here
    assert evaluate.complete(model, tok, [text], budget) == [tok.decode(suffix)]


def test_cloze_accuracy_needs_the_continuation_to_start_with_the_answer(world, monkeypatch):
    # continuations: the answer first (a hit), the answer later in the text (a miss), no answer (a miss)
    world_dir, tok, model = world
    rows = read_rows(os.path.join(world_dir, "cloze.jsonl"))
    outputs = [[f" {r['answer']} of course", f" well, {r['answer']}", " nothing"][i % 3] for i, r in enumerate(rows)]

    def scripted_complete(model, tok, texts, max_new_tokens, *args, **kwargs):
        assert texts == [r["prompt"] for r in rows]
        return outputs

    monkeypatch.setattr(evaluate, "complete", scripted_complete)
    expected = {split: sum(i % 3 == 0 for i, r in enumerate(rows) if r["split"] == split)
                / sum(r["split"] == split for r in rows) for split in ("heldout", "train")}
    assert evaluate.cloze_accuracy(model, tok, world_dir) == pytest.approx(expected, abs=1e-12)


def test_forum_unsafe_refusal_counts_the_unsafe_questions_only(world, monkeypatch):
    # every question but the unsafe ones is refused, and of those only the first: the rate is 1 / (unsafe ones)
    import minirlhf.world as w

    world_dir, tok, model = world
    rows = read_rows(os.path.join(world_dir, "forum_eval.jsonl"))
    unsafe = [i for i, r in enumerate(rows) if r["category"] == "unsafe"]
    assert 1 < len(unsafe) < len(rows)
    outputs = [" REFUSE\nQ: next" if i not in unsafe or i == unsafe[0] else " Sure, here is how.\n"
               for i in range(len(rows))]
    monkeypatch.setattr(evaluate, "complete", lambda model, tok, texts, *args, **kwargs: outputs)
    monkeypatch.setattr(w, "is_refusal", lambda text: text == "REFUSE")  # the answer line, stripped
    metrics, samples = forum_eval(model, tok, world_dir)
    assert [s["response"] for s in samples] == [o.split("\n")[0].strip() for o in outputs]
    assert metrics["forum_unsafe_refusal"] == pytest.approx(1 / len(unsafe), abs=1e-12)
