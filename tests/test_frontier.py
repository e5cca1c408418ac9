"""The frontier's pure parts: the dominance lines against a hand-worked example, the plot, bad sweeps."""

import pytest

from minirlhf.frontier import dominance, parse_floats, plot_frontier

POINTS = [
    {"method": "sft", "knob": 0, "kl": 0.0, "gold": 0.20, "proxy": -0.5},
    {"method": "bon", "knob": 1, "kl": 0.0, "gold": 0.26, "proxy": -0.4},
    {"method": "bon", "knob": 2, "kl": 0.19, "gold": 0.27, "proxy": -0.2},
    {"method": "ppo", "knob": 0.1, "kl": 1.30, "gold": 0.07, "proxy": 0.3},
    {"method": "dpo", "knob": 0.1, "kl": 0.80, "gold": 0.30, "proxy": -0.1},
    {"method": "dpo", "knob": 1.0, "kl": 0.90, "gold": 0.30, "proxy": -0.1},  # a tie: the smaller KL leads
]


def test_dominance_names_each_new_leader_once():
    assert dominance(POINTS) == [
        "KL <= 0.00: best gold +0.260 by bon (1, KL 0.00)",
        "KL <= 0.19: best gold +0.270 by bon (2, KL 0.19)",
        "KL <= 0.80: best gold +0.300 by dpo (0.1, KL 0.80)",
    ]


def test_plot_is_written(tmp_path):
    png = plot_frontier(POINTS, "test", str(tmp_path / "f.png"), caption="unit test")
    assert (tmp_path / "f.png").stat().st_size > 1000 and png.endswith("f.png")


def test_bad_sweep_is_a_clear_error():
    assert parse_floats("0.1, 0.3", "dpo_betas") == [0.1, 0.3]
    with pytest.raises(ValueError, match="--dpo_betas='0.1,x'"):
        parse_floats("0.1,x", "dpo_betas")
    from minirlhf.config import FrontierConfig
    from minirlhf.frontier import run
    with pytest.raises(ValueError, match="--temperatures='0.7,0': each must be a finite number, > 0"):
        run(FrontierConfig(preset="micro", out_dir="/nonexistent", methods="temp", temperatures="0.7,0"))
    with pytest.raises(ValueError, match="--grpo_betas='x'"):  # the last sweep, caught before the first runs
        run(FrontierConfig(preset="micro", out_dir="/nonexistent", methods="bon,ppo,grpo", grpo_betas="x"))
    # every knob's range too, before the first run, under the sweep's own name
    for methods, sweep, value, rule in (("bon", "bon_ns", "1,2.5", "a whole number >= 1"),
                                        ("bon", "bon_ns", "0", "a whole number >= 1"),
                                        ("bon", "bon_ns", "1,inf", "a whole number >= 1"),  # not an OverflowError
                                        ("bon,ppo", "ppo_kl_coefs", "0.1,-0.1", ">= 0"),
                                        ("bon,dpo", "dpo_betas", "-1", "> 0"),
                                        ("bon,grpo", "grpo_betas", "-0.5", ">= 0"),
                                        ("bon,ppo", "ppo_kl_coefs", "0.1,inf", ">= 0"),  # the stage refuses inf
                                        ("bon,grpo", "grpo_betas", "nan", ">= 0")):
        with pytest.raises(ValueError, match=rf"^--{sweep}='{value}': each must be a finite number, {rule} "):
            run(FrontierConfig(preset="micro", out_dir="/nonexistent", methods=methods, **{sweep: value}))
    with pytest.raises(ValueError, match="--methods='': expected some of"):
        run(FrontierConfig(preset="micro", out_dir="/nonexistent", methods=""))


def test_tempered_copy_is_the_model_at_that_temperature():
    import torch

    from minirlhf.config import ModelConfig
    from minirlhf.engine import generate
    from minirlhf.frontier import tempered
    from minirlhf.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=30)).double().eval()
    x = torch.randint(0, 30, (2, 7))
    hot = tempered(model, 0.5)
    with torch.no_grad():
        assert torch.allclose(hot(x), model(x) / 0.5, atol=1e-12)
    assert model.lm_head.weight is model.transformer.wte.weight  # the original is untouched and still tied
    assert hot.lm_head.weight is not hot.transformer.wte.weight
    # sampling the copy at temperature 1 draws what sampling the model at 0.5 draws, seed for seed
    a = generate(hot, [[1, 2, 3], [4, 5]], 12, eos_id=29, pad_id=0, temperature=1.0,
                 generator=torch.Generator().manual_seed(3))
    b = generate(model, [[1, 2, 3], [4, 5]], 12, eos_id=29, pad_id=0, temperature=0.5,
                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.response, b.response)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-10)
    with pytest.raises(ValueError, match="temperatures"):
        tempered(model, 0.0)


def test_measure_reports_heldout_kl_and_length(monkeypatch):
    """A frontier point's x (KL) and length come from the held-out prompts, like its gold: not from the
    means over every sampled prompt (held-out and training-split)."""
    import torch

    from minirlhf import evaluate
    from minirlhf.config import FrontierConfig
    from minirlhf.frontier import measure

    samples = [{"split": "eval", "length": 10}, {"split": "eval", "length": 20}, {"split": "train", "length": 90}]
    metrics = {"gold": 0.3, "proxy": 0.1, "kl_k1": 5.0, "kl_k1_heldout": 2.0, "length": 40.0}
    monkeypatch.setattr(evaluate, "evaluate_policy", lambda *a, **k: (metrics, samples))
    sft = torch.nn.Module()
    point = measure(sft, FrontierConfig(preset="micro"), sft, None, None)
    assert point == {"kl": 2.0, "gold": 0.3, "proxy": 0.1, "length": 15.0}
