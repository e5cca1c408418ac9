"""Sampling filters, greedy log-probs, rollout shards, the LR schedule, the training loop and checkpoints,
each pinned by hand-computed values.

What the generate-vs-naive and resume tests cannot see: top-p's exact boundary and its order after top-k,
greedy log-probs at temperature 1, independent shard seeds, `lr_at` against hand values (warm-up, cosine,
floor), gradient clipping, per-group learning-rate scales and per-row grad norms in `train_loop`, the NaN
guard naming the loss term, `load_model` setting dropout, and `load_checkpoint` refusing arbitrary objects.
"""

import datetime
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from minirlhf import checkpoint as ck
from minirlhf.common import NonFiniteLossError, lr_at
from minirlhf.config import ModelConfig
from minirlhf.engine import generate, generate_sharded, sample_next
from minirlhf.model import GPT
from minirlhf.train_loop import train_loop

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=61)
EOS, PAD = 60, 59
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15, 16, 17]]


def make_model(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).double().eval()


def draws(logits, k, p, n=300):
    gen = torch.Generator().manual_seed(0)
    return {int(sample_next(logits, 1.0, k, p, gen)[0]) for _ in range(n)}


# ---------------- engine
def test_top_p_exact_boundary():  # probabilities exact in binary, mass_before hits top_p exactly
    assert len(draws(torch.zeros(1, 4), 0, 0.5)) == 2  # 0.25 + 0.25 reaches 0.5: the third is dropped
    assert len(draws(torch.zeros(1, 4), 0, 0.25)) == 1


def test_top_p_is_taken_over_the_top_k_renormalised_distribution():
    # top-2 of [.4 .3 .2 .1] renormalised is [4/7, 3/7]: 4/7 >= 0.5 already, so top_p=0.5 keeps token 0 only
    assert draws(torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])), 2, 0.5) == {0}


def test_greedy_logprobs_are_at_temperature_one():
    model = make_model()
    out = generate(model, PROMPTS, 8, EOS, PAD, temperature=0)
    P = out.prompt.size(1)
    logits = model(out.tokens, attention_mask=out.attention_mask)
    logp = F.log_softmax(logits[:, P - 1:-1], -1).gather(-1, out.response[..., None]).squeeze(-1) * out.response_mask
    assert (logp - out.logprobs).abs().max().item() < 1e-10


def test_sharded_shards_draw_independently():
    model = make_model(2)
    out, rows = generate_sharded(model, [[1, 2, 3]] * 4, 2, seed=5, max_new_tokens=10, eos_id=EOS, pad_id=PAD)
    assert rows == slice(0, 4)
    assert not torch.equal(out.response[:2], out.response[2:])  # same prompts, shards seeded apart


# ---------------- learning-rate schedule (common.lr_at), by hand
def test_lr_at_by_hand():
    assert lr_at(0, 10, 1.0, 2, 0.1) == pytest.approx(0.5)  # warm-up: (step + 1) / warmup
    assert lr_at(1, 10, 1.0, 2, 0.1) == pytest.approx(1.0)
    assert lr_at(2, 10, 1.0, 2, 0.1) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(6, 10, 1.0, 2, 0.1) == pytest.approx(0.55)  # half-way: 0.1 + 0.9 * 0.5
    assert lr_at(10, 10, 1.0, 2, 0.1) == pytest.approx(0.1)  # reaches lr * min_lr_ratio at max_steps


# ---------------- train_loop with a one-weight model and SGD: every number by hand
def loop_cfg(**kw):
    c = dict(max_steps=3, batch_size=1, grad_accum=1, lr=1.0, min_lr_ratio=1.0, warmup_steps=0, grad_clip=2.5,
             log_interval=1, eval_interval=1000, dtype="float32", progress=False, max_minutes=0, stop_after=0,
             resume=False, seed=0)
    return SimpleNamespace(**{**c, **kw})


def test_train_loop_clips_schedules_and_logs_grad_norm_per_row(tmp_path):
    w, v = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    model = torch.nn.Module()
    model.w, model.v = w, v
    opt = torch.optim.SGD([{"params": [w]}, {"params": [v], "lr_scale": 0.5}], lr=1.0)
    lrs = []

    def batch_loss(step, rows):  # gradient step + 1 on w, 0 on v: norm step + 1
        lrs.append([g["lr"] for g in opt.param_groups])
        return (step + 1) * w.sum() + 0.0 * v.sum(), {}

    cfg = loop_cfg(warmup_steps=1, min_lr_ratio=0.0)
    train_loop("t", cfg, model, opt, str(tmp_path), batch_loss, lambda: {}, torch.device("cpu"))
    want = [lr_at(s, 3, 1.0, 1, 0.0) for s in range(3)]  # 1.0, 1.0, 0.5
    assert want == pytest.approx([1.0, 1.0, 0.5])
    assert [a for a, _ in lrs] == pytest.approx(want) and [b for _, b in lrs] == pytest.approx([x / 2 for x in want])
    # gradients 1, 2, 3 clipped to 2.5: w = -(1 * 1 + 1 * 2 + 0.5 * 2.5)
    assert w.item() == pytest.approx(-(1 + 2 + 1.25))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["grad_norm"] for r in rows] == pytest.approx([1.0, 2.0, 3.0])  # pre-clip norm of each step
    assert [r["lr"] for r in rows] == pytest.approx(want)


def test_nan_guard_names_the_term(tmp_path):
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nan = torch.tensor(float("nan"))

    def batch_loss(step, rows):
        return model.weight.sum() * nan, {"kl_loss": nan}

    with pytest.raises(NonFiniteLossError, match=r"t: kl_loss is nan at step 1"):
        train_loop("t", loop_cfg(), model, opt, str(tmp_path), batch_loss, lambda: {}, torch.device("cpu"),
                   loss_name="total_loss")


# ---------------- checkpoint
def test_load_model_sets_dropout_not_the_checkpoints(tmp_path):
    path = str(tmp_path / "m.pt")
    ck.save_checkpoint(path, ck.model_payload(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8,
                                                               vocab_size=11, dropout=0.3)), "pretrain"))
    assert ck.load_model(path)[0].config.dropout == 0.0
    assert ck.load_model(path, dropout=0.2)[0].config.dropout == 0.2


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {}, "when": datetime.date(2020, 1, 1)}, path)
    with pytest.raises(RuntimeError, match=r"evil.pt is not a checkpoint written by minirlhf"):  # weights only
        ck.load_checkpoint(path)


def test_model_files_load_where_asked_and_only_as_their_kind(tmp_path):
    """model_payload unwraps DDP (.module) and torch.compile (._orig_mod) wrappers; load_model / load_checkpoint
    honour the device / map_location; a policy passed as a reward model is refused by name."""
    from minirlhf.model import ScalarModel

    class Wrapper(torch.nn.Module):
        def __init__(self, attr, inner):
            super().__init__()
            setattr(self, attr, inner)

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=11))
    path = str(tmp_path / "m.pt")
    ck.save_checkpoint(path, ck.model_payload(Wrapper("module", Wrapper("_orig_mod", model)), "sft"))
    state = ck.load_checkpoint(path, map_location="meta")
    assert state["model"].keys() == model.state_dict().keys() and state["model_config"]["n_embd"] == 8
    assert all(t.device.type == "meta" for t in state["model"].values())
    loaded, _ = ck.load_model(path, device="meta")
    assert all(p.device.type == "meta" for p in loaded.parameters())
    with pytest.raises(RuntimeError, match=r"m.pt is not a reward/value model checkpoint \(it has no scalar head\)"):
        ck.load_scalar_model(path)
    rm = str(tmp_path / "rm.pt")
    ck.save_checkpoint(rm, ck.model_payload(ScalarModel(model), "reward"))
    assert isinstance(ck.load_scalar_model(rm)[0], ScalarModel)


def test_rng_state_round_trip_and_cuda_state_per_device(monkeypatch):
    """set_rng_state(rng_state()) replays torch's and Python's draws (a pending gauss value included); a CUDA
    state is set only where CUDA is available, and a list of per-GPU states gives this device its own entry
    (the last one where there are fewer)."""
    import random

    random.gauss(0, 1)  # leaves the second normal of the pair pending in the state
    state = ck.rng_state()
    first = (torch.rand(3), random.random(), random.gauss(0, 1))
    ck.set_rng_state(state)
    second = (torch.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]

    set_cuda = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_cuda.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ck.set_rng_state({**state, "cuda": "gpu0"})
    assert set_cuda == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for device, expected in [(0, "gpu0"), (1, "gpu1"), (3, "gpu1")]:
        monkeypatch.setattr(torch.cuda, "current_device", lambda d=device: d)
        ck.set_rng_state({**state, "cuda": ["gpu0", "gpu1"]})
        assert set_cuda[-1] == expected, device
    ck.set_rng_state({**state, "cuda": "one"})
    assert set_cuda[-1] == "one"
