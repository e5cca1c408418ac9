"""The rules behind the reported numbers, checked by hand or against a naive reference: best-of-n's batching,
budget and table (the `best-of-n` stage end to end on a small fake world), the frontier's sweep (stage configs,
points, frontier.json on failure, knob ranges at their edges) and plot data, the pipeline's stage order and
options, the report's columns and category table, the loss plot's inputs, `minirlhf sample` and the chat
template's edge cases."""

import json
import math
import os

import pytest
import torch

from minirlhf import checkpoint as ck
from minirlhf.config import ModelConfig
from minirlhf.model import GPT, ScalarModel
from minirlhf.tokenizer import Tokenizer


def byte_tokenizer() -> Tokenizer:
    """A tokenizer without merges: one token per byte, so token counts are character counts."""
    return Tokenizer.train("abc", vocab_size=261)


def fixed_policy(tok: Tokenizer, end_logit: float, block_size: int = 64) -> GPT:
    """A GPT whose next-token distribution is the same at every position: "a", "b", "c" at logit 0, <|end|> at
    `end_logit`, every other token at -30. The final layer norm has weight 0 and bias e_0, so it outputs e_0
    whatever its input, and the logits are column 0 of the (tied) embedding matrix."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=block_size, vocab_size=tok.n_vocab))
    with torch.no_grad():
        ln = model.transformer.ln_f
        ln.weight.zero_()
        ln.bias.zero_()
        ln.bias[0] = 1.0
        wte = model.transformer.wte.weight
        wte[:, 0] = -30.0
        for ch in "abc":
            wte[tok.encode(ch)[0], 0] = 0.0
        wte[tok.end_id, 0] = end_logit
    return model.eval()


def random_reward_model(tok: Tokenizer, seed: int = 1, block_size: int = 64) -> ScalarModel:
    torch.manual_seed(seed)
    return ScalarModel(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=block_size,
                                       vocab_size=tok.n_vocab))).eval()


# ---------------------------------------------------------------------------------------------------
# best-of-n


def test_best_of_n_batches_hold_at_most_batch_size_rows(monkeypatch):
    """Each generate call gets max(1, batch_size // n) prompts, each repeated n times, so n > batch_size still runs."""
    from minirlhf import best_of_n

    tok = byte_tokenizer()
    policy, rm = fixed_policy(tok, 0.0), random_reward_model(tok)
    prompts = [[tok.user_id, 97 + i % 3, tok.end_id, tok.assistant_id] for i in range(5)]
    sizes = []
    real = best_of_n.generate

    def spy(model, chunk, *args, **kwargs):
        sizes.append(len(chunk))
        return real(model, chunk, *args, **kwargs)

    monkeypatch.setattr(best_of_n, "generate", spy)
    bon = best_of_n.best_of_n_responses(policy, rm, tok, prompts, 3, max_new_tokens=3, batch_size=7)
    assert sizes == [6, 6, 3]  # 7 // 3 = 2 prompts x 3 samples, the last batch the fifth prompt alone
    assert [len(t) for t in bon.texts] == [3] * 5 and bon.proxy.shape == (5, 3)
    sizes.clear()
    bon = best_of_n.best_of_n_responses(policy, rm, tok, prompts, 4, max_new_tokens=3, batch_size=2)
    assert sizes == [4] * 5 and bon.proxy.shape == (5, 4)  # 2 // 4 = 0: still one prompt per batch


def test_best_of_n_budget_is_the_context_left_by_the_longest_prompt():
    """A 60-token prompt in a 64-token context leaves room for 4 new tokens, not max_new_tokens = 48."""
    from minirlhf.best_of_n import best_of_n_responses

    tok = byte_tokenizer()
    policy, rm = fixed_policy(tok, -30.0), random_reward_model(tok)  # never ends: every response runs to the budget
    prompts = [[97] * 60, [98] * 3]
    bon = best_of_n_responses(policy, rm, tok, prompts, 2, max_new_tokens=48, batch_size=4)
    assert [[len(t) for t in row] for row in bon.texts] == [[4, 4], [4, 4]]  # one byte per token
    assert not bon.ended.any()


def test_best_of_n_samples_at_the_given_temperature():
    """n = 1 at T = 0.5 draws what plain sampling at T = 0.5 with the same seed draws (not T = 1)."""
    from minirlhf.best_of_n import best_of_n_responses
    from minirlhf.engine import generate

    tok = byte_tokenizer()
    policy, rm = fixed_policy(tok, -1.0), random_reward_model(tok)
    prompts = [[tok.user_id, 97, tok.end_id, tok.assistant_id]] * 6
    bon = best_of_n_responses(policy, rm, tok, prompts, 1, temperature=0.5, max_new_tokens=6, seed=4)
    g = generate(policy, prompts, 6, tok.end_id, tok.pad_id, temperature=0.5, generator=torch.Generator().manual_seed(4))
    plain = [tok.decode([t for t, k in zip(row, keep) if k]) for row, keep in
             zip(g.response.tolist(), g.response_mask.tolist())]
    assert [t[0] for t in bon.texts] == plain
    g1 = generate(policy, prompts, 6, tok.end_id, tok.pad_id, temperature=1.0, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(g1.response, g.response)  # the temperature changes what is drawn


def test_best_of_n_table_proxy_column_is_the_score_without_the_penalty():
    """The proxy column is the chosen responses' reward-model score; the penalty only steers the choice."""
    from minirlhf.best_of_n import best_of_n_table

    proxy = torch.tensor([[5.0, 1.0], [3.0, 2.0]])
    gold = torch.tensor([[0.5, 0.25], [1.0, -1.0]])
    ended = torch.tensor([[False, True], [False, False]])
    rows = best_of_n_table(proxy, gold, ended, [2], missing_eos_penalty=2.0)
    # prompt 0: 5 - 2 = 3 > 1, sample 0 (no <|end|>) is chosen; prompt 1: both penalised, sample 0
    assert rows == [{"n": 2, "gold": 0.75, "proxy": 4.0, "gold_oracle": 0.75, "kl_analytic": 0.1931}]


def naive_table(samples: list[dict], ns: list[int], penalty: float) -> list[dict]:
    """best-of-n's rows computed one prompt at a time from samples.jsonl (first maximum wins)."""
    rows = []
    for n in ns:
        gold, proxy, oracle = [], [], []
        for s in samples:
            select = [p - penalty * (not t.endswith("<|end|>")) for p, t in zip(s["proxy"][:n], s["responses"][:n])]
            j = select.index(max(select))
            gold.append(s["gold"][j])
            proxy.append(s["proxy"][j])
            oracle.append(max(s["gold"][:n]))
        rows.append({"n": n, "gold": sum(gold) / len(gold), "proxy": sum(proxy) / len(proxy),
                     "gold_oracle": sum(oracle) / len(oracle), "kl_analytic": math.log(n) - (n - 1) / n})
    return rows


def test_best_of_n_stage_on_a_fake_world(tmp_path):
    """`best-of-n` end to end: only the held-out prompts, max(ns) samples each, the table (with the penalty) and the
    pairwise accuracy recomputed by hand from samples.jsonl; n = 1 alone has no pairwise accuracy (None)."""
    from minirlhf.best_of_n import run
    from minirlhf.config import BestOfNConfig

    tok = byte_tokenizer()
    out = tmp_path / "out"
    world = out / "micro" / "world"
    world.mkdir(parents=True)
    (world / "summary.json").write_text(json.dumps({"unsafe_topics": {"eval_only": []}}))
    rows = [{"prompt": f"q{i}", "category": "fact", "topic": "t", "split": "train" if i % 3 == 0 else "eval"}
            for i in range(12)]
    (world / "eval_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (world / "rl_prompts.jsonl").write_text(json.dumps({"prompt": "r", "category": "fact", "topic": "t",
                                                        "split": "train"}) + "\n")
    for stage, model, kind in (("sft", fixed_policy(tok, -0.6), "sft"), ("reward", random_reward_model(tok), "reward")):
        ck.save_checkpoint(str(out / "micro" / stage / "model.pt"), ck.model_payload(model, kind))
        tok.save(out / "micro" / stage / "tokenizer.json")
    judge = tmp_path / "length_judge.py"  # gold = length mod 3: ties and differences
    judge.write_text("def score(prompt, response):\n    return float(len(response.replace('<|end|>', '')) % 3)\n")
    cfg = dict(preset="micro", out_dir=str(out), seed=5, max_new_tokens=6, batch_size=8, missing_eos_penalty=50.0,
               gold_judge=f"{judge}:score", device="cpu")

    summary = run(BestOfNConfig(ns="3,1,2", **cfg))
    samples = [json.loads(line) for line in open(out / "micro" / "best_of_n" / "samples.jsonl")]
    held = [r["prompt"] for r in rows if r["split"] == "eval"]
    assert [s["prompt"] for s in samples] == held and summary["prompts"] == len(held) == 8
    assert summary["samples_per_prompt"] == 3 and all(len(s["responses"]) == len(s["gold"]) == 3 for s in samples)
    expected = naive_table(samples, [1, 2, 3], 50.0)
    assert naive_table(samples, [1, 2, 3], 0.0) != expected  # the penalty changed some choice on this seed
    assert [r["n"] for r in summary["rows"]] == [1, 2, 3]
    for got, want in zip(summary["rows"], expected):
        assert got == pytest.approx(want, abs=2e-4)
    hits = pairs = 0
    for s in samples:
        for i in range(3):
            for j in range(i + 1, 3):
                if s["gold"][i] != s["gold"][j]:
                    pairs += 1
                    hits += (s["proxy"][i] - s["proxy"][j]) * (s["gold"][i] - s["gold"][j]) > 0
    assert 0 < pairs < 3 * len(samples)  # some pairs tie on gold and are left out
    assert summary["rm_pairwise_pairs"] == pairs
    assert summary["rm_pairwise_gold_accuracy"] == pytest.approx(hits / pairs, abs=1e-4)

    single = run(BestOfNConfig(ns="1", **cfg))
    assert single["rm_pairwise_gold_accuracy"] is None and single["rm_pairwise_pairs"] == 0


# ---------------------------------------------------------------------------------------------------
# the frontier


def test_frontier_knob_ranges_at_their_edges(tmp_path):
    """DPO's beta 0 is refused before anything runs; PPO's kl_coef 0 and GRPO's beta 0 are in range (the run goes
    on and fails only for the missing SFT model); an empty sweep is an error naming it."""
    from minirlhf.config import FrontierConfig
    from minirlhf.frontier import parse_floats, run

    with pytest.raises(ValueError, match=r"^--dpo_betas='0': each must be a finite number, > 0 \(0 is not\)$"):
        run(FrontierConfig(preset="micro", out_dir=str(tmp_path), methods="dpo", dpo_betas="0"))
    for methods, sweep in (("ppo", "ppo_kl_coefs"), ("grpo", "grpo_betas")):
        with pytest.raises(FileNotFoundError, match="sft/model.pt does not exist"):
            run(FrontierConfig(preset="micro", out_dir=str(tmp_path), methods=methods, **{sweep: "0"}))
    for spec in ("", " , "):
        with pytest.raises(ValueError, match="^--bon_ns is empty$"):
            parse_floats(spec, "bon_ns")


def test_frontier_measure_uses_the_sft_reference_the_reward_model_and_the_run_seed(monkeypatch):
    """Every point is measured against the SFT model, with the frontier's reward model and seed, on its world."""
    from minirlhf import evaluate
    from minirlhf.config import FrontierConfig
    from minirlhf.frontier import measure

    calls = []

    def fake(policy, tok, world, **kwargs):
        calls.append((policy, tok, world, kwargs))
        return {"gold": 0.0, "proxy": 0.0, "kl_k1_heldout": 0.0}, [{"split": "eval", "length": 3}]

    monkeypatch.setattr(evaluate, "evaluate_policy", fake)
    policy, sft = torch.nn.Module(), torch.nn.Module()
    measure(policy, FrontierConfig(preset="micro", out_dir="somewhere", seed=11), sft, "TOK", "RM")
    assert calls == [(policy, "TOK", os.path.join("somewhere", "micro", "world"),
                      {"reference": sft, "reward_model": "RM", "seed": 11})]


def frontier_stubs(monkeypatch, tmp_path, fail_in: str = ""):
    """Stand-ins for the stages and `measure` under `frontier.run`: returns (stage configs, measured policies)."""
    from minirlhf import best_of_n, dpo, frontier, grpo, ppo, sft
    from minirlhf.best_of_n import kl_best_of_n, parse_ns

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=30))
    monkeypatch.setattr(sft, "stage_file", lambda cfg, stage, name: os.path.join(cfg.out_dir, cfg.preset, stage, name))
    monkeypatch.setattr(sft, "tokenizer_of", lambda path: "TOK")
    monkeypatch.setattr(ck, "load_model", lambda path, device: (model, {}))
    monkeypatch.setattr(ck, "load_scalar_model", lambda path, device: ("RM", {}))
    ran, measured = [], []

    def stage(name):
        def fake(cfg):
            ran.append((name, cfg))
            if name == fail_in:
                raise RuntimeError(f"{name} failed")
            if name == "bon":
                return {"rows": [{"n": n, "gold": 0.1 * n, "proxy": -0.2 * n, "gold_oracle": 9.0,
                                  "kl_analytic": kl_best_of_n(n)} for n in parse_ns(cfg.ns)]}
            return {}
        return fake

    for name, module in (("bon", best_of_n), ("ppo", ppo), ("dpo", dpo), ("grpo", grpo)):
        monkeypatch.setattr(module, "run", stage(name))

    def fake_measure(policy, cfg, sft_model, tok, reward_model):
        assert sft_model is model and tok == "TOK" and reward_model == "RM"
        measured.append(policy)
        i = len(measured)
        return {"kl": 0.5 * i, "gold": 0.01 * i, "proxy": 0.02 * i, "length": 10.0 + i}

    monkeypatch.setattr(frontier, "measure", fake_measure)
    monkeypatch.setattr(frontier, "plot_frontier", lambda points, preset, png, caption="": png)
    return model, ran, measured


def test_frontier_sweep_runs_each_stage_with_its_knob_and_records_every_point(tmp_path, monkeypatch):
    """The SFT origin first, best-of-n's rows as they are (analytic KL, no length), each trained run's own folder
    measured, the tempered copy at T; frontier.json complete."""
    from minirlhf.config import FrontierConfig
    from minirlhf.frontier import run

    model, ran, measured = frontier_stubs(monkeypatch, tmp_path)
    out = str(tmp_path / "out")
    result = run(FrontierConfig(preset="micro", out_dir=out, seed=7, methods="temp,grpo,dpo,ppo,bon", bon_ns="1,2.0",
                                ppo_kl_coefs="0.05", dpo_betas="0.3", grpo_betas="0", temperatures="0.5",
                                plots_dir=str(tmp_path / "plots")))
    assert [name for name, _ in ran] == ["bon", "ppo", "dpo", "grpo"]
    cfgs = dict(ran)
    assert all((c.preset, c.out_dir, c.seed) == ("micro", out, 7) for c in cfgs.values())
    assert cfgs["bon"].ns == "1,2" and cfgs["bon"].temperature == 1.0
    assert (cfgs["ppo"].run_name, cfgs["ppo"].kl_coef, cfgs["ppo"].adaptive_kl) == ("frontier_ppo_kl0.05", 0.05, False)
    assert (cfgs["dpo"].run_name, cfgs["dpo"].beta, cfgs["dpo"].truncate) == ("frontier_dpo_beta0.3", 0.3, True)
    assert (cfgs["grpo"].run_name, cfgs["grpo"].beta) == ("frontier_grpo_beta0", 0.0)
    base = os.path.join(out, "micro")
    assert measured[:4] == [os.path.join(base, folder, "model.pt") for folder in
                            ("sft", "frontier_ppo_kl0.05", "frontier_dpo_beta0.3", "frontier_grpo_beta0")]
    hot = measured[4]
    assert hot is not model and torch.equal(hot.lm_head.weight, model.lm_head.weight / 0.5)

    def point(method, knob, i):
        return {"method": method, "knob": knob, "kl": 0.5 * i, "gold": 0.01 * i, "proxy": 0.02 * i, "length": 10.0 + i}

    expected = [point("sft", 0, 1),
                {"method": "bon", "knob": 1, "kl": 0.0, "gold": 0.1, "proxy": -0.2, "length": None},
                {"method": "bon", "knob": 2, "kl": math.log(2) - 0.5, "gold": 0.2, "proxy": -0.4, "length": None},
                point("ppo", 0.05, 2), point("dpo", 0.3, 3), point("grpo", 0.0, 4), point("temp", 0.5, 5)]
    saved = json.load(open(os.path.join(base, "frontier", "frontier.json")))
    assert result["points"] == saved["points"] == expected and saved["complete"] is True


def test_frontier_json_keeps_the_points_of_a_run_that_fails_half_way(tmp_path, monkeypatch):
    """A sweep that fails in GRPO leaves frontier.json with the points measured so far, marked incomplete."""
    from minirlhf.config import FrontierConfig
    from minirlhf.frontier import run

    frontier_stubs(monkeypatch, tmp_path, fail_in="grpo")
    out = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match="grpo failed"):
        run(FrontierConfig(preset="micro", out_dir=out, methods="bon,ppo,grpo", bon_ns="1", ppo_kl_coefs="0.1",
                           grpo_betas="0.1", plots_dir=str(tmp_path / "plots")))
    saved = json.load(open(os.path.join(out, "micro", "frontier", "frontier.json")))
    assert saved["complete"] is False
    assert [(p["method"], p["knob"]) for p in saved["points"]] == [("sft", 0), ("bon", 1), ("ppo", 0.1)]


def test_frontier_json_keeps_best_of_n_points_when_the_next_stage_fails(tmp_path, monkeypatch):
    """frontier.json is rewritten once best-of-n's rows are in: a PPO run failing after it keeps them."""
    from minirlhf.config import FrontierConfig
    from minirlhf.frontier import run

    frontier_stubs(monkeypatch, tmp_path, fail_in="ppo")
    out = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match="ppo failed"):
        run(FrontierConfig(preset="micro", out_dir=out, methods="ppo,bon", bon_ns="2,1", ppo_kl_coefs="0.1",
                           plots_dir=str(tmp_path / "plots")))
    saved = json.load(open(os.path.join(out, "micro", "frontier", "frontier.json")))
    assert saved["complete"] is False
    assert [(p["method"], p["knob"], p["length"]) for p in saved["points"]] == [("sft", 0, 11.0), ("bon", 1, None),
                                                                                 ("bon", 2, None)]


def test_frontier_plot_data(tmp_path, monkeypatch):
    """Gold vs KL: each trained method's line starts at the SFT point and runs in KL order, best-of-n's from its own
    n = 1; every point but the origin is labelled with its knob; proxy vs gold: the method's own points only."""
    from matplotlib.axes import Axes

    from minirlhf.frontier import plot_frontier

    points = [{"method": "sft", "knob": 0, "kl": 0.0, "gold": 0.2, "proxy": -0.5},
              {"method": "ppo", "knob": 0.01, "kl": 1.3, "gold": 0.1, "proxy": 0.4},
              {"method": "ppo", "knob": 0.3, "kl": 0.4, "gold": 0.25, "proxy": 0.0},
              {"method": "bon", "knob": 4, "kl": 0.64, "gold": 0.3, "proxy": -0.1},
              {"method": "bon", "knob": 1, "kl": 0.0, "gold": 0.22, "proxy": -0.5}]
    drawn, notes = [], []
    plot, annotate = Axes.plot, Axes.annotate

    def spy_plot(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), args[0], args[1]))
        return plot(self, *args, **kwargs)

    def spy_annotate(self, text, xy, *args, **kwargs):
        notes.append((text, xy))
        return annotate(self, text, xy, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy_plot)
    monkeypatch.setattr(Axes, "annotate", spy_annotate)
    plot_frontier(points, "test", str(tmp_path / "f.png"))
    assert drawn == [("SFT (the reference)", 0.0, 0.2), ("SFT", -0.5, 0.2),
                     ("PPO (kl_coef)", [0.0, 0.4, 1.3], [0.2, 0.25, 0.1]),  # gold vs KL, from the origin
                     ("PPO (kl_coef)", [0.0, 0.4], [0.25, 0.1]),  # proxy vs gold
                     ("best-of-n (n)", [0.0, 0.64], [0.22, 0.3]),
                     ("best-of-n (n)", [-0.5, -0.1], [0.22, 0.3])]
    assert notes == [("0.3", (0.4, 0.25)), ("0.01", (1.3, 0.1)), ("1", (0.0, 0.22)), ("4", (0.64, 0.3))]


# ---------------------------------------------------------------------------------------------------
# the pipeline and its report


def test_pipeline_runs_every_stage_in_order_with_the_shared_options(tmp_path, monkeypatch):
    """world -> pretrain -> SFT -> pairs -> reward -> PPO -> DPO, world and pairs on rank 0 alone; preset, seed,
    out_dir and --force reach all, device/dtype/progress the training stages, --truncate SFT, reward and DPO; the
    pretraining loss plot gets the unigram entropy as its baseline."""
    import minirlhf.world.build
    from minirlhf import distributed, dpo, pairs, pipeline, plots, ppo, pretrain, reward, sft
    from minirlhf.config import PipelineConfig

    calls, solo, curves = [], [], []
    summaries = {"world": {"corpus_mb": 1.5, "reused": True}, "pretrain": {"unigram_entropy": 4.25, "seconds": 9.0}}
    for name, module in (("world", minirlhf.world.build), ("pretrain", pretrain), ("sft", sft), ("pairs", pairs),
                         ("reward", reward), ("ppo", ppo), ("dpo", dpo)):
        monkeypatch.setattr(module, "run", lambda cfg, name=name: calls.append((name, cfg)) or
                            dict(summaries.get(name, {"seconds": 1.0})))
    monkeypatch.setattr(distributed, "on_main", lambda fn, cfg: solo.append(cfg) or fn(cfg))
    monkeypatch.setattr(plots, "loss_curve", lambda metrics, png, title="Loss", baseline=None:
                        curves.append((metrics, png, title, baseline)) or png)
    out, figs = str(tmp_path / "out"), str(tmp_path / "plots")
    os.makedirs(os.path.join(out, "micro"))  # (the stages would make it)
    result = pipeline.run(PipelineConfig(preset="micro", seed=7, out_dir=out, plots_dir=figs, force=True, device="cpu",
                                         dtype="float32", progress=False, truncate=True))
    assert [name for name, _ in calls] == ["world", "pretrain", "sft", "pairs", "reward", "ppo", "dpo"]
    cfg = dict(calls)
    assert solo == [cfg["world"], cfg["pairs"]]
    assert all((c.preset, c.seed, c.out_dir, c.force) == ("micro", 7, out, True) for c in cfg.values())
    for name in ("pretrain", "sft", "reward", "ppo", "dpo"):
        assert (cfg[name].device, cfg[name].dtype, cfg[name].progress) == ("cpu", "float32", False), name
    assert cfg["pairs"].device == "cpu"
    assert [cfg[name].truncate for name in ("sft", "reward", "dpo")] == [True, True, True]  # (their default: False)
    base = os.path.join(out, "micro")
    assert curves == [(os.path.join(base, "pretrain", "metrics.jsonl"), os.path.join(figs, "pretrain_loss_micro.png"),
                       "Pretraining loss (micro)", (4.25, "unigram entropy")),
                      (os.path.join(base, "sft", "metrics.jsonl"), os.path.join(figs, "sft_loss_micro.png"),
                       "SFT loss (micro)", None),
                      (os.path.join(base, "reward", "metrics.jsonl"), os.path.join(figs, "reward_loss_micro.png"),
                       "Reward model loss (Bradley-Terry) (micro)", None)]
    assert result["figures"] == [c[1] for c in curves] and os.path.exists(os.path.join(base, "report.md"))


def test_report_columns_are_base_sft_ppo_dpo_and_each_row_reads_its_own_key(tmp_path):
    """The model table's columns in a fixed order whatever the run order, every row the metric its label names
    (held-out vs training-split gold, held-out vs all-prompt KL, seen vs held-out unsafe topics)."""
    from minirlhf.pipeline import write_report

    base = {"forum_gold": 0.21, "forum_fact_acc": 0.31, "forum_unsafe_refusal": 0.05, "heldout_ppl": 12.5}
    sft = {"gold": 0.41, "gold_train": 0.61, "kl_k1_heldout": 0.0, "kl_k1": 0.0, "refusal_sft_unsafe": 0.9,
           "refusal_heldout_unsafe": 0.3, "heldout_ppl": 13.5}
    ppo = {"gold": 0.52, "gold_train": 0.72, "kl_k1_heldout": 1.5, "kl_k1": 2.5, "refusal_sft_unsafe": 0.8,
           "refusal_heldout_unsafe": 0.2, "heldout_ppl": 14.25, "seconds": 30.0}
    dpo = {"gold": 0.63, "gold_train": 0.83, "kl_k1_heldout": 0.75, "kl_k1": 0.875, "refusal_sft_unsafe": 0.7,
           "refusal_heldout_unsafe": 0.1, "heldout_ppl": 15.5}
    path = str(tmp_path / "report.md")
    write_report(path, "micro", [("pretrain", 1.0, base), ("sft", 1.0, sft), ("dpo", 1.0, dpo), ("ppo", 2.0, ppo)])
    lines = open(path).read().splitlines()
    for line in ("| metric | base (forum format) | SFT | PPO | DPO |", "|---|---:|---:|---:|---:|",
                 "| gold reward, the forum-eval questions | 0.21 |  |  |  |",
                 "| gold reward, held-out prompts |  | 0.41 | 0.52 | 0.63 |",
                 "| gold reward, training-split prompts |  | 0.61 | 0.72 | 0.83 |",
                 "| refusal, unsafe topics seen in SFT |  | 0.9 | 0.8 | 0.7 |",
                 "| refusal, held-out unsafe topics |  | 0.3 | 0.2 | 0.1 |",
                 "| KL to the SFT model, held-out prompts (nats per response) |  | 0 | 1.5 | 0.75 |",
                 "| KL to the SFT model, all evaluation prompts |  | 0 | 2.5 | 0.875 |",
                 "| held-out perplexity (alignment tax) | 12.5 | 13.5 | 14.25 | 15.5 |",
                 "| ppo | 2.0 | 30.0 | gold = 0.52, kl_k1_heldout = 1.5, kl_k1 = 2.5 |"):
        assert line in lines, line


def test_report_category_table_held_out_first_blank_where_a_model_lacks_a_group(tmp_path):
    """Mean gold per (split, category) from each stage's samples.jsonl: held-out groups first, n from a model that
    has the group, an empty cell where a model has none, a stage without samples.jsonl left out."""
    from minirlhf.pipeline import _category_section

    def write(stage, rows):
        os.makedirs(tmp_path / stage)
        (tmp_path / stage / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("sft", [{"split": "train", "category": "fact", "gold": 1.0},
                  {"split": "eval", "category": "unsafe", "gold": 0.0},
                  {"split": "eval", "category": "fact", "gold": 0.5},
                  {"split": "eval", "category": "fact", "gold": 0.25}])
    write("ppo", [{"split": "eval", "category": "fact", "gold": 1.0},
                  {"split": "train", "category": "harmless", "gold": -1.0}])
    lines = _category_section(str(tmp_path), ["sft", "ppo", "dpo"])  # no dpo/samples.jsonl
    assert lines[-6:] == ["| prompts | n | SFT | PPO |", "|---|---:|---:|---:|",
                          "| held-out: fact | 2 | 0.375 | 1.000 |",
                          "| held-out: unsafe | 1 | 0.000 |  |",
                          "| training split: fact | 1 | 1.000 |  |",
                          "| training split: harmless | 1 |  | -1.000 |"]


# ---------------------------------------------------------------------------------------------------
# plots


def test_metrics_with_blank_lines_and_the_loss_baseline(tmp_path, monkeypatch):
    """Blank lines in metrics.jsonl are skipped; a baseline is drawn at its value with its label."""
    from matplotlib.axes import Axes

    from minirlhf import plots

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n\n')
    assert plots.read_metrics(str(path)) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    lines = []
    original = Axes.axhline

    def spy(self, y=0, *args, **kwargs):
        lines.append((y, kwargs.get("label")))
        return original(self, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "axhline", spy)
    plots.loss_curve(str(path), str(tmp_path / "a.png"), baseline=(4.25, "unigram entropy"))
    assert lines == [(4.25, "unigram entropy")]
    plots.loss_curve(str(path), str(tmp_path / "b.png"))
    assert lines == [(4.25, "unigram entropy")]


# ---------------------------------------------------------------------------------------------------
# minirlhf sample


def random_checkpoint(folder) -> tuple[str, GPT, Tokenizer]:
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tok.n_vocab)).eval()
    path = str(folder / "model.pt")
    ck.save_checkpoint(path, ck.model_payload(model, "pretrain"))
    tok.save(folder / "tokenizer.json")
    return path, model, tok


def test_sample_draws_with_its_seed_and_filters(tmp_path):
    """`sample` draws what `generate` draws with a generator seeded --seed and the same top-k / top-p filters,
    stopping at <|endoftext|> for a plain prompt."""
    from minirlhf.config import SampleConfig
    from minirlhf.engine import generate
    from minirlhf.sample import run

    path, model, tok = random_checkpoint(tmp_path)
    texts = run(SampleConfig(checkpoint=path, prompt="ab", num_samples=4, max_new_tokens=5, temperature=1.0, top_k=3,
                             top_p=0.9, seed=3, device="cpu"))
    g = generate(model, [tok.encode("ab")] * 4, 5, eos_id=tok.eot_id, pad_id=tok.pad_id, temperature=1.0, top_k=3,
                 top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert texts == [tok.decode([t for t, k in zip(row, keep) if k])
                     for row, keep in zip(g.response.tolist(), g.response_mask.tolist())]


def test_sample_errors_name_the_cause(tmp_path):
    """Called directly (no command-line range check first): max_new_tokens < 1 and a prompt that fills the context
    are errors saying so; a bad top_p fails before the (missing) checkpoint is read."""
    from minirlhf.config import SampleConfig
    from minirlhf.sample import run

    path, _, _ = random_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"^--max_new_tokens=0: must be >= 1$"):
        run(SampleConfig(checkpoint=path, max_new_tokens=0, device="cpu"))
    with pytest.raises(ValueError, match="^the prompt has 16 tokens: no room left in the context of 16$"):
        run(SampleConfig(checkpoint=path, prompt="a" * 16, device="cpu"))
    with pytest.raises(ValueError, match="top_p"):
        run(SampleConfig(checkpoint=str(tmp_path / "missing" / "model.pt"), top_p=0.0, device="cpu"))


# ---------------------------------------------------------------------------------------------------
# the chat template


def test_chat_template_edge_cases():
    """A string is not a message list (TypeError); a system text goes into the first user turn only; render_reply
    masks the final reply alone, not the earlier assistant turns of the prompt."""
    from minirlhf.chat import render_conversation, render_reply

    tok = byte_tokenizer()
    U, A, E = tok.user_id, tok.assistant_id, tok.end_id
    with pytest.raises(TypeError, match="messages must be a list"):
        render_conversation(tok, "Hi")
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "r"}, {"role": "assistant", "content": "b"}]
    ids, _ = render_conversation(tok, msgs)
    assert ids == [U, *tok.encode("s\n\nq"), E, A, *tok.encode("a"), E, U, *tok.encode("r"), E, A, *tok.encode("b"), E]
    ids, mask = render_reply(tok, msgs[:4], "bc")
    assert ids[-4:] == [A, *tok.encode("bc"), E]
    assert mask == [0] * (len(ids) - 3) + [1, 1, 1]  # "b", "c" and the closing <|end|>
