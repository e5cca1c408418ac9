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
