"""Data parallelism (torchrun, DDP, gloo on CPU): N processes train on exactly what one process trains on.

Two gloo processes (`torchrun --standalone --nproc_per_node=2`) run SFT (with the pretraining mix), the reward
model (also with ODIN's length head), DPO, PPO (with PPO-ptx) and GRPO on the micro shapes; every loss they
log and every final weight must match a one-process run with the same global batch to 1e-5 (float32, same
seeds), and so must the evaluation harness each stage ends with (each rank samples and judges its share of the
prompts). The one-process run cuts each global batch into the same two micro-batches as the two processes
(`--grad_accum=2`), on one thread like each of them, so both do the same floating-point work and agree to the
last bits or nearly: a looser comparison would not catch much, because several parameters (the attention's key
biases) have an exactly-zero true gradient, and Adam turns the rounding noise that different batch shapes
leave there into steps of a fraction of the learning rate. That the number of micro-batches does not change
the step is tested on its own below, in one process (`--grad_accum` 1, 2, 4), also for SFT's mean over a
varying number of tokens. PPO and GRPO sample in two seeded shards in both runs (`--rollout_shards=2`), so
both runs sample the same rollouts; their minibatches are not split in one process, so their agreement is
within rounding. The same two-process job stops an SFT run after step 2 and resumes it (it must end where the
uninterrupted run ends) and records every file each process writes: rank 1 must write nothing. A rank that
raises must end the job with its own error (naming the rank), and a rank that hangs must end it after the
collective timeout.

The two-process tests launch `torchrun` (seconds of start-up per launch on a busy 2-core machine) and
are marked slow: run them with `pytest -m slow tests/test_distributed.py`.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from minirlhf import distributed as dist
from minirlhf.checkpoint import load_checkpoint
from minirlhf.cli import main

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
EVAL_KEYS = {"gold", "gold_train", "fact_acc_train", "refusal_sft_unsafe", "length", "eos_rate", "n_prompts",
             "forum_prompts_gold", "kl_k1", "proxy"}  # summary.json numbers from the evaluation harness


def commands(base, out: str, ref: str, grad_accum: int = 1) -> list[list[str]]:
    """SFT (+ptx), reward (plain and with ODIN's length head), DPO, PPO (+ptx), GRPO writing to `out`; every
    input comes from `base` or the reference run `ref`, so the one- and two-process runs of a stage start from
    the same files."""
    sft_model = os.path.join(ref, "micro", "sft", "model.pt")
    common = ["--preset=micro", f"--out_dir={out}", "--progress=false", "--force"]
    train = ["--log_interval=1", "--eval_interval=1000", "--warmup_steps=2", f"--grad_accum={grad_accum}"]
    # SFT logs every 3 steps, so the resumed run's stop after step 2 falls between two rows (see below)
    sft_train = [a.replace("--log_interval=1", "--log_interval=3") for a in train]
    return [
        ["sft", *common, *sft_train, f"--init={base['init']}", f"--data={base['sft']}", f"--eval_data={base['sft']}",
         "--max_steps=5", "--batch_size=8", "--lr=3e-3", "--ptx_coef=0.5", "--ptx_batch_size=4"],
        ["reward", *common, *train, f"--init={sft_model}", f"--prefs={base['prefs']}", f"--eval_prefs={base['prefs']}",
         f"--prompts={base['prompts']}", "--max_steps=4", "--batch_size=8", "--lr=3e-3", "--calibration_prompts=8",
         "--max_new_tokens=8"],
        ["reward", *common, *train, f"--init={sft_model}", f"--prefs={base['prefs']}", f"--eval_prefs={base['prefs']}",
         f"--prompts={base['prompts']}", "--max_steps=4", "--batch_size=8", "--lr=3e-3", "--calibration_prompts=8",
         "--max_new_tokens=8", "--length_head_coef=1", "--run_name=reward_odin"],  # correlations per micro-batch
        ["dpo", *common, *train, f"--init={sft_model}", f"--reference={sft_model}", f"--prefs={base['prefs']}",
         f"--eval_prefs={base['prefs']}", "--max_steps=4", "--batch_size=8", "--lr=1e-3"],
        ["ppo", *common, f"--init={sft_model}", f"--reward_model={os.path.join(ref, 'micro', 'reward', 'model.pt')}",
         f"--prompts={base['prompts']}", "--iterations=3", "--batch_size=8", "--minibatch_size=4", "--ppo_epochs=2",
         # one PPO-ptx window per minibatch: rank 0 of two gets none (its ptx term must be 0, not a NaN mean)
         "--max_new_tokens=8", "--rollout_shards=2", "--lr=5e-4", "--ptx_coef=0.1", "--ptx_batch_size=1",
         "--eval_interval=1000"],
        ["grpo", *common, f"--init={sft_model}", f"--reward_model={os.path.join(ref, 'micro', 'reward', 'model.pt')}",
         f"--prompts={base['prompts']}", "--iterations=3", "--prompts_per_iteration=4", "--group_size=2",
         "--minibatch_size=4", "--ppo_epochs=2", "--max_new_tokens=8", "--rollout_shards=2", "--lr=5e-4",
         "--beta=0.1", "--eval_interval=1000"],
    ]


def torchrun(spec: dict, path, timeout: float = 600, nproc: int = 2, **env_vars) -> subprocess.CompletedProcess:
    with open(path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.dirname(WORKER)]), OMP_NUM_THREADS="1",
               PYTHONFAULTHANDLER="1", **env_vars)  # a worker that aborts prints its Python stacks
    return subprocess.run([TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", WORKER, str(path)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def with_pretrain_tokens(base, out: str, world: str | None = None) -> None:
    """SFT's and PPO's pretraining mix read out/<preset>/pretrain/train.bin: give each run the base model's
    (and, with `world`, a copy of a micro world, so that every stage ends with the evaluation harness)."""
    os.makedirs(os.path.join(out, "micro", "pretrain"), exist_ok=True)
    shutil.copyfile(os.path.join(base["out"], "micro", "pretrain", "train.bin"),
                    os.path.join(out, "micro", "pretrain", "train.bin"))
    if world is not None:
        shutil.copytree(world, os.path.join(out, "micro", "world"))


def metric_rows(out: str, stage: str) -> list[dict]:
    with open(os.path.join(out, "micro", stage, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def two_runs(base, tmp_path_factory):
    """The same six stage runs in one process (in this pytest process) and in two torchrun processes."""
    root = tmp_path_factory.mktemp("dist")
    runs = root / "runs"  # the folder whose writes are recorded (the report goes beside it)
    ref, two, resumed = str(runs / "one_process"), str(runs / "two_processes"), str(runs / "two_resumed")
    assert main(["world", "--preset=micro", f"--out_dir={root / 'world'}"]) == 0
    for out in (ref, two, resumed):
        with_pretrain_tokens(base, out, world=str(root / "world" / "micro" / "world"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): the same float reductions
    try:
        for argv in commands(base, ref, ref, grad_accum=2):  # the same two micro-batches as the two processes
            assert main(argv) == 0, argv
    finally:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    sft_again = commands(base, resumed, ref)[0]  # the two-process SFT again, stopped after step 2, then resumed
    spec = {"commands": commands(base, two, ref) + [sft_again + ["--stop_after=2"], sft_again + ["--resume"]],
            "watch": str(runs), "report": str(root / "report")}
    proc = torchrun(spec, root / "spec.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-12000:]
    print(f"two-process job: {time.perf_counter() - t0:.1f} s")
    return {"ref": ref, "two": two, "resumed": resumed, "report": str(root / "report"),
            "output": proc.stdout + proc.stderr}


def assert_rows_match(ref_rows: list[dict], two_rows: list[dict], stage: str, skip=("seconds",)) -> None:
    """Same rows, same keys, numbers equal to TOL (relative above 1); keys starting with one of `skip` ignored."""
    assert len(ref_rows) == len(two_rows) > 0, stage
    for a, b in zip(ref_rows, two_rows):
        a, b = ({k: v for k, v in row.items() if not k.startswith(skip)} for row in (a, b))
        assert a.keys() == b.keys(), (stage, sorted(a.keys() ^ b.keys()))
        for k in a:
            if not isinstance(a[k], (int, float)):
                continue
            assert abs(a[k] - b[k]) <= TOL * max(1.0, abs(a[k])), (stage, a.get("step", a.get("iteration")), k,
                                                                  a[k], b[k])


def assert_weights_match(ref_path: str, two_path: str) -> None:
    a, b = load_checkpoint(ref_path)["model"], load_checkpoint(two_path)["model"]
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= TOL, (two_path, worst)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "reward", "reward_odin", "dpo", "ppo", "grpo"])
def test_two_processes_match_one_process(two_runs, stage):
    ref_rows, two_rows = metric_rows(two_runs["ref"], stage), metric_rows(two_runs["two"], stage)
    assert_rows_match(ref_rows, two_rows, stage)
    # the loss must actually have moved, or matching it proves little
    if stage == "ppo":
        assert ref_rows[0]["policy_loss"] != ref_rows[-1]["policy_loss"] and "ptx_loss" in ref_rows[0]
    elif stage == "grpo":
        assert ref_rows[0]["policy/loss"] != ref_rows[-1]["policy/loss"] and "objective/kl" in ref_rows[0]
        assert any(r["reward/zero_std_groups"] < 1 for r in ref_rows)  # some groups had a learning signal
    else:
        assert ref_rows[0]["loss"] != ref_rows[-1]["loss"]
    assert_weights_match(os.path.join(two_runs["ref"], "micro", stage, "model.pt"),
                         os.path.join(two_runs["two"], "micro", stage, "model.pt"))
    # the evaluation harness at the end (each rank sampled half of the prompts) reports what one process does
    summaries = []
    for run in ("ref", "two"):
        with open(os.path.join(two_runs[run], "micro", stage, "summary.json")) as f:
            summaries.append(json.load(f))
    assert summaries[1]["stage"] == stage.split("_")[0]  # reward_odin: the reward stage with ODIN's length head
    if not stage.startswith("reward"):
        a, b = ({k: v for k, v in x.items() if k in EVAL_KEYS} for x in summaries)
        assert a.keys() == b.keys() == EVAL_KEYS - ({"kl_k1", "proxy"} if stage == "sft" else set()), stage
        assert_rows_match([a], [b], stage)
        assert a["n_prompts"] > 64, "the evaluation must span several batches, or no rank had to share"


@pytest.mark.slow
def test_two_processes_resume_where_they_stopped(two_runs):
    """--stop_after=2 then --resume under torchrun ends exactly where the uninterrupted two-process run ends:
    the same rows and weights. Rows come every 3 steps, so the row of step 3 averages steps 1-3 across the
    stop: the checkpoint kept steps 1-2 summed over both ranks, on rank 0."""
    assert [r["step"] for r in metric_rows(two_runs["two"], "sft")] == [3, 5]
    assert_rows_match(metric_rows(two_runs["two"], "sft"), metric_rows(two_runs["resumed"], "sft"), "sft")
    assert_weights_match(os.path.join(two_runs["two"], "micro", "sft", "model.pt"),
                         os.path.join(two_runs["resumed"], "micro", "sft", "model.pt"))


@pytest.mark.slow
def test_rank_zero_alone_writes_artifacts(two_runs):
    with open(os.path.join(two_runs["report"], "writes_rank0.json")) as f:
        rank0 = json.load(f)
    with open(os.path.join(two_runs["report"], "writes_rank1.json")) as f:
        rank1 = json.load(f)
    assert rank1 == [], rank1[:10]
    for stage in ("sft", "reward", "dpo", "ppo", "grpo"):
        for name in ("model.pt", "metrics.jsonl", "summary.json", "config.json"):
            assert any(w.endswith(os.path.join(stage, name)) or os.path.join(stage, name + ".tmp") in w
                       for w in rank0), (stage, name)


def failing_sft(base, tmp_path, hang: bool) -> dict:
    """An SFT job whose rank 1 raises (or hangs) in its third call of sft_loss."""
    out = str(tmp_path / "out")
    return {"commands": [["sft", "--preset=micro", f"--out_dir={out}", "--progress=false", f"--init={base['init']}",
                          f"--data={base['sft']}", f"--eval_data={base['sft']}", "--max_steps=50",
                          "--batch_size=8", "--log_interval=1"]],
            "watch": out, "report": str(tmp_path / "report"),
            "fail": {"rank": 1, "function": "minirlhf.sft:sft_loss", "after_calls": 2, "hang": hang}}


@pytest.mark.slow
def test_a_crash_on_one_rank_ends_the_job_with_that_ranks_error(base, tmp_path):
    t0 = time.perf_counter()
    proc = torchrun(failing_sft(base, tmp_path, hang=False), tmp_path / "spec.json", timeout=300)
    seconds = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "minirlhf sft: error on rank 1 of 2: injected failure in sft_loss (call 3)" in output, output[-4000:]
    assert seconds < 120, seconds  # ended, not hung until a timeout
    assert not os.path.exists(os.path.join(tmp_path, "out", "micro", "sft", "model.pt"))


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_after_the_timeout(base, tmp_path):
    """Rank 1 stops answering: rank 0's next collective fails after MINIRLHF_DIST_TIMEOUT seconds, naming
    rank 0 and the timeout, and torchrun then stops rank 1."""
    t0 = time.perf_counter()
    proc = torchrun(failing_sft(base, tmp_path, hang=True), tmp_path / "spec.json", timeout=300,
                    MINIRLHF_DIST_TIMEOUT="10")
    seconds = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "minirlhf sft: error on rank 0 of 2:" in output and "within 10 s (MINIRLHF_DIST_TIMEOUT)" in output, \
        output[-4000:]
    assert seconds < 120, seconds


@pytest.mark.slow
def test_two_process_micro_pipeline_completes(tmp_path):
    """`torchrun --nproc_per_node=2 -m minirlhf pipeline --preset micro` writes every artifact of a one-process
    run; then a data-parallel stage run by rank 0 alone (`on_main`, as `minirlhf frontier` runs its PPO and
    DPO runs) completes as a one-process job instead of waiting for the other rank."""
    out, plots = str(tmp_path / "run" / "out"), str(tmp_path / "run" / "plots")
    spec = {"commands": [["pipeline", "--preset=micro", f"--out_dir={out}", f"--plots_dir={plots}",
                          "--progress=false"],
                         ["@on_main", "dpo", "--loss=ipo", "--preset=micro", f"--out_dir={out}", "--max_steps=2",
                          "--truncate=true", "--progress=false"]],
            "watch": str(tmp_path / "run"), "report": str(tmp_path / "report")}
    t0 = time.perf_counter()
    proc = torchrun(spec, tmp_path / "spec.json", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-12000:]
    print(f"two-process micro pipeline: {time.perf_counter() - t0:.1f} s")
    base = os.path.join(out, "micro")
    for stage in ("pretrain", "sft", "reward", "ppo", "dpo"):
        assert os.path.exists(os.path.join(base, stage, "model.pt")), stage
        assert os.path.exists(os.path.join(base, stage, "summary.json")), stage
    assert os.path.exists(os.path.join(base, "report.md"))
    assert os.path.exists(os.path.join(base, "dpo_ipo", "model.pt"))
    with open(os.path.join(tmp_path / "report", "writes_rank1.json")) as f:
        assert json.load(f) == []


# ----------------------------------------------------------------------------------------------------
# one process: the weighting that makes the split irrelevant


def sft_argv(base, out, **kw):
    over = {"preset": "micro", "out_dir": out, "progress": "false", "force": "true", "init": base["init"],
            "data": base["sft"], "eval_data": base["sft"], "max_steps": 4, "batch_size": 8, "lr": 3e-3,
            "log_interval": 1, "eval_interval": 1000, "warmup_steps": 2, **kw}
    return ["sft"] + [f"--{k}={v}" for k, v in over.items()]


@pytest.mark.parametrize("ptx", [0.0, 0.5])
def test_sft_grad_accum_does_not_change_the_step(base, tmp_path, ptx):
    """SFT's loss is a mean over the global batch's supervised tokens: 1, 2 or 4 micro-batches (whose token
    counts differ) give the same loss and weights. The same weighting makes N processes match one."""
    runs = {}
    for accum in (1, 2, 4):
        out = str(tmp_path / f"accum{accum}")
        with_pretrain_tokens(base, out)
        assert main(sft_argv(base, out, grad_accum=accum, ptx_coef=ptx)) == 0
        runs[accum] = out
    for accum in (2, 4):
        assert_rows_match(metric_rows(runs[1], "sft"), metric_rows(runs[accum], "sft"), "sft")
        assert_weights_match(os.path.join(runs[1], "micro", "sft", "model.pt"),
                             os.path.join(runs[accum], "micro", "sft", "model.pt"))
    # the micro-batches really had different token counts (else any weighting would agree)
    assert metric_rows(runs[1], "sft")[0]["loss"] != metric_rows(runs[1], "sft")[-1]["loss"]


def test_rank_slices_cover_the_global_batch(monkeypatch):
    """Rank r's micro-batches are the r-th 1/N of the global batch, cut into ceil(grad_accum / N) pieces."""
    assert dist.rank_slices(8, 2) == [slice(0, 4), slice(4, 8)]
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    assert dist.rank_slices(8, 1) == [slice(4, 8)]
    assert dist.rank_slices(8, 4) == [slice(4, 6), slice(6, 8)]
    assert dist.rank_slices(12, 6) == [slice(6, 8), slice(8, 10), slice(10, 12)]
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        dist.rank_slices(9, 1)


def test_collectives_are_no_ops_in_one_process():
    x = torch.tensor([1.0, 2.0])
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main() and dist.where() == ""
    assert dist.all_reduce_sum(x) is x and dist.all_reduce_mean(2.5) == 2.5 and dist.all_gather_rows(x) is x
    assert dist.share({"a": 1}) == {"a": 1} and dist.on_main(lambda v: v + 1, 1) == 2
    model = torch.nn.Linear(2, 2)
    assert dist.data_parallel(model) is model and dist.unwrap(model) is model


def test_bad_timeout_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(dist.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="MINIRLHF_DIST_TIMEOUT='soon'"):
        dist.timeout_seconds()
    monkeypatch.setenv(dist.TIMEOUT_ENV, "30")
    assert math.isclose(dist.timeout_seconds(), 30.0)
