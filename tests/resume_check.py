"""One stop / crash / resume scenario for the RL loops (PPO and GRPO), checked against an uninterrupted run.

Used by tests/test_ppo.py and tests/test_grpo.py; not a test module itself (pytest collects test_*.py).
"""

import json
import os

import pytest
import torch


class Crash(Exception):
    """Stands for a run killed mid-iteration."""


def rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def without_seconds(rs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]


def check_stop_and_resume(run, reward_fn, tmp_path):
    """`run(out, reward_fn, **overrides) -> (result, state_dict)` trains 4 iterations with eval_interval 2
    from fresh models. --stop_after=1, then --resume with a crash in iteration 4 (after the checkpoint of
    iteration 2), then --resume, then --resume of the finished run: each must end with the weights and the
    metrics rows (wall time aside) of one uninterrupted run, no row twice. Returns the uninterrupted rows."""
    _, expected = run(tmp_path / "straight", reward_fn)
    expected_rows = without_seconds(rows(tmp_path / "straight"))

    out = tmp_path / "stopped"
    result, _ = run(out, reward_fn, stop_after=1)  # checkpoint after iteration 1
    assert result["interrupted"] and [r["iteration"] for r in rows(out)] == [1]
    calls = []

    def crash_in_iteration_4(*args):  # resumed after 1: the reward calls of iterations 2, 3, 4
        calls.append(1)
        if len(calls) == 3:
            raise Crash
        return reward_fn(*args)

    with pytest.raises(Crash):
        run(out, crash_in_iteration_4, resume=True)  # checkpoint after iteration 2 (eval_interval), not 3
    assert [r["iteration"] for r in rows(out)] == [1, 2, 3]
    result, state = run(out, reward_fn, resume=True)
    assert not result["interrupted"] and result["trained_iterations"] == 2  # iterations 3 and 4
    assert without_seconds(rows(out)) == expected_rows
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)

    result, state = run(out, reward_fn, resume=True)  # finished: nothing left to train
    assert result["trained_iterations"] == 0 and without_seconds([result["last_row"]]) == expected_rows[-1:]
    assert without_seconds(rows(out)) == expected_rows
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    return expected_rows


def check_stage_stop_and_resume(run, config_class, name: str, base: dict, tmp_path, summary_key: str, **sizes):
    """`minirlhf <name>` (the stage's `run` and config class; 3 iterations of `sizes` on the micro fixture
    `base`, against a random reward model) with --stop_after=1 leaves no model.pt and reports the
    interruption; --resume then ends with the model.pt, the metrics rows (wall time aside) and the
    summary's `summary_key` of an uninterrupted run, and --resume of the finished run reproduces them."""
    from minirlhf import checkpoint as ck
    from minirlhf.config import make_config
    from conftest import untrained_reward_model

    torch.manual_seed(0)
    rm = untrained_reward_model(base, tmp_path)
    over = dict(preset="micro", out_dir=str(tmp_path / "out"), init=base["init"], reward_model=rm,
                prompts=base["prompts"], iterations=3, max_new_tokens=8, progress=False, **sizes)
    out_root = tmp_path / "out" / "micro"

    def stage(run_name, **kw):
        return run(make_config(config_class, overrides={**over, "run_name": run_name, **kw}))

    def artifacts(run_name):
        d = out_root / run_name
        return ck.load_checkpoint(str(d / "model.pt"))["model"], without_seconds(rows(d))

    straight = stage("straight")
    assert stage("resumed", stop_after=1) == {"stage": name, "iterations": 1, "interrupted": True}
    assert not (out_root / "resumed" / "model.pt").exists()
    resumed = stage("resumed", resume=True)
    assert resumed[summary_key] == straight[summary_key] and resumed["iterations"] == 3
    (weights, metrics), (expected_weights, expected_metrics) = artifacts("resumed"), artifacts("straight")
    assert metrics == expected_metrics and all(torch.equal(weights[k], expected_weights[k]) for k in weights)
    again = stage("resumed", resume=True)  # finished: nothing to train, the same artifacts
    assert again[summary_key] == straight[summary_key] and artifacts("resumed")[1] == expected_metrics
    assert all(torch.equal(artifacts("resumed")[0][k], expected_weights[k]) for k in weights)
