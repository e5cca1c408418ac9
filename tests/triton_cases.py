"""The Triton log-prob + entropy kernel (minirlhf/triton_logprobs.py) against float64 references.

Not collected by a plain `pytest` (no test_ prefix): `tests/test_triton_logprobs.py` runs this file in
a child process with TRITON_INTERPRET=1, so that Triton's interpreter runs the kernels on the CPU
. Triton reads that variable when it is first imported, hence the separate process. By hand:

    TRITON_INTERPRET=1 pytest tests/triton_cases.py

The references are the textbook formulas in float64 (log_softmax + gather; H = -sum p log p), not the
library's own plain path, so these tests would catch a mistake shared by both.
"""

import math
import os

import pytest
import torch

import minirlhf.triton_logprobs as kernel_module
from minirlhf import ops
from minirlhf.config import ModelConfig
from minirlhf.engine import response_logprobs
from minirlhf.model import GPT

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run with TRITON_INTERPRET=1 (tests/test_triton_logprobs.py does)", allow_module_level=True)


@pytest.fixture
def kernel(monkeypatch):
    """The kernel module, switched on (MINIRLHF_TRITON=1: it is opt-in)."""
    monkeypatch.setenv("MINIRLHF_TRITON", "1")
    return kernel_module


def reference64(logits, labels, temperature):
    """float64 log p(label) and entropy -sum p log p of softmax(logits / T), differentiable."""
    z = logits.double() / temperature  # (..., V)
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def values_and_grad(fn, logits, labels, temperature, g_logp, g_entropy):
    """fn's (logp, entropy) and d(sum(g_logp logp + g_entropy entropy))/d logits, on a (B, T, V) tensor
    sliced the way PPO slices its logits (the response positions: not contiguous)."""
    full = logits.detach().clone().requires_grad_()
    logp, entropy = fn(full[:, 2:-1], labels, temperature)
    loss = (logp.double() * g_logp).sum()
    if g_entropy is not None:
        loss = loss + (entropy.double() * g_entropy).sum()
    loss.backward()
    return logp.detach().double(), entropy.detach().double(), full.grad.double()


@pytest.mark.parametrize("V", [37, 1024, 2500])  # below one block, exactly one, several with a ragged end
@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
@pytest.mark.parametrize("with_entropy", [True, False])
def test_float32_values_and_gradients_match_float64_reference(kernel, V, temperature, with_entropy):
    g = torch.Generator().manual_seed(V)
    logits = (torch.randn(3, 9, V, generator=g, dtype=torch.float64) * 4).float()  # (3, 9, V)
    labels = torch.randint(0, V, (3, 6), generator=g)  # positions 2..7
    g_logp = torch.randn(3, 6, generator=g, dtype=torch.float64)
    g_entropy = torch.randn(3, 6, generator=g, dtype=torch.float64) if with_entropy else None
    got = values_and_grad(kernel.logprobs_and_entropy, logits, labels, temperature, g_logp, g_entropy)
    want = values_and_grad(reference64, logits, labels, temperature, g_logp, g_entropy)
    for a, b, name in zip(got, want, ("logp", "entropy", "d logits")):
        assert (a - b).abs().max().item() < 1e-5, name
    assert got[2][:, :2].abs().max() == 0 and got[2][:, -1].abs().max() == 0  # outside the slice: no gradient


def test_uniform_and_one_hot_rows_by_hand(kernel):
    # V equal logits: log p = -log V and entropy = log V at any temperature; all mass on one token: 0 and 0
    V = 1500
    logits = torch.zeros(2, V)
    logits[1, 7] = 1e4  # all the mass on token 7
    labels = torch.tensor([3, 7])
    logp, entropy = kernel.logprobs_and_entropy(logits, labels, temperature=0.5)
    assert logp[0].item() == pytest.approx(-torch.log(torch.tensor(float(V))).item(), abs=1e-5)
    assert entropy[0].item() == pytest.approx(torch.log(torch.tensor(float(V))).item(), abs=1e-5)
    assert logp[1].item() == 0.0 and entropy[1].item() == 0.0


def test_large_and_masked_logits_stay_finite(kernel):
    # logits of +-1e4 (no overflow: the running max is subtracted) and -inf entries (a top-k filter)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3000, generator=g) * 1e4
    logits[:, ::3] = float("-inf")
    labels = torch.tensor([1, 2, 4, 5])  # finite entries
    logp, entropy = kernel.logprobs_and_entropy(logits, labels, temperature=1.0)
    finite = logits.double().masked_fill(torch.isinf(logits), -1e300)  # the reference without 0 * -inf
    want_logp, want_entropy = reference64(finite, labels, 1.0)
    assert torch.isfinite(logp).all() and torch.isfinite(entropy).all()
    # log-probs of order -1e4: float32 holds them to a few parts in 1e8
    assert torch.allclose(logp.double(), want_logp, rtol=1e-6, atol=1e-5)
    assert torch.allclose(entropy.double(), want_entropy, rtol=1e-6, atol=1e-5)


def test_a_row_at_the_lowest_float_is_uniform(kernel):
    # every logit at float32's lowest value (a "mask everything" fill): equal logits, the uniform distribution
    V = 40
    logits = torch.full((2, V), torch.finfo(torch.float32).min)
    logp, entropy = kernel.logprobs_and_entropy(logits, torch.tensor([0, 7]), temperature=1.0)
    assert torch.allclose(logp, torch.full((2,), -math.log(V)), atol=1e-6)
    assert torch.allclose(entropy, torch.full((2,), math.log(V)), atol=1e-5)


def test_masked_logits_give_finite_gradients(kernel):
    # a -inf logit (a top-k filter) has p = 0 and no gradient; the label's log-prob still gets its gradient
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 1500, generator=g, dtype=torch.float64).float()
    logits[:, 1::2] = float("-inf")
    labels = torch.tensor([0, 2, 4])
    g_logp, g_entropy = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    x = logits.clone().requires_grad_()
    logp, entropy = kernel.logprobs_and_entropy(x, labels, 0.8)
    ((logp.double() * g_logp).sum() + (entropy.double() * g_entropy).sum()).backward()
    assert torch.isfinite(x.grad).all() and (x.grad[:, 1::2] == 0).all()
    kept = logits[:, ::2].clone().requires_grad_()  # the same distribution without the -inf columns
    want_logp, want_entropy = reference64(kept, labels // 2, 0.8)
    ((want_logp * g_logp).sum() + (want_entropy * g_entropy).sum()).backward()
    assert (x.grad[:, ::2].double() - kept.grad.double()).abs().max().item() < 1e-5
    assert (logp.double() - want_logp).abs().max().item() < 1e-5


def test_large_logits_lose_no_more_precision_than_log_softmax(kernel):
    # every logit offset by 1000 (float32 spacing there: 6e-5): log p and H depend only on differences, so
    # computed relative to the max they stay as exact as for small logits (an lse of ~1000 subtracted from
    # z_y would cost about 3e-5)
    g = torch.Generator().manual_seed(6)
    logits = (torch.randn(4, 3000, generator=g, dtype=torch.float64) + 1000).float()
    labels = torch.randint(0, 3000, (4,), generator=g)
    want_logp, want_entropy = reference64(logits, labels, 1.0)  # of the same float32 inputs
    logp, entropy = kernel.logprobs_and_entropy(logits, labels)
    assert (logp.double() - want_logp).abs().max().item() < 2e-6
    assert (entropy.double() - want_entropy).abs().max().item() < 2e-6


def test_other_shapes_and_dtypes(kernel):
    # 2-D and 1-D logits, a permuted (not contiguous) view, int32 labels, fp16 logits, empty inputs
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(5, 4, 300, generator=g, dtype=torch.float64).float()
    labels = torch.randint(0, 300, (5, 4), generator=g)
    want_logp, want_entropy = reference64(logits, labels, 1.0)
    cases = [(logits.reshape(20, 300), labels.reshape(20), want_logp.reshape(20)),
             (logits[2, 1], labels[2, 1], want_logp[2, 1]),
             (logits.permute(1, 0, 2), labels.T, want_logp.T),
             (logits, labels.int(), want_logp)]
    for x, y, want in cases:
        logp, _ = kernel.logprobs_and_entropy(x, y)
        assert logp.shape == want.shape and (logp.double() - want).abs().max().item() < 1e-5
    logp16, entropy16 = kernel.logprobs_and_entropy(logits.half(), labels)
    want16 = reference64(logits.half(), labels, 1.0)
    assert (logp16.double() - want16[0]).abs().max().item() < 1e-5
    assert (entropy16.double() - want16[1]).abs().max().item() < 1e-5
    x = torch.randn(2, 0, 300, requires_grad=True)
    logp, entropy = kernel.logprobs_and_entropy(x, torch.zeros(2, 0, dtype=torch.long))
    assert logp.shape == entropy.shape == (2, 0)
    logp.sum().backward()
    assert x.grad.shape == x.shape


def test_label_outside_the_vocabulary_gives_nan_not_a_neighbours_logit(kernel):
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(8))
    logp, entropy = kernel.logprobs_and_entropy(logits, torch.tensor([100, -1, 5]))
    assert torch.isnan(logp[:2]).all() and torch.isfinite(logp[2]) and torch.isfinite(entropy).all()


def test_outputs_are_separate_tensors_and_second_derivatives_are_refused(kernel):
    x = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(9), requires_grad=True)
    logp, entropy = kernel.logprobs_and_entropy(x, torch.zeros(2, 3, dtype=torch.long))
    logp.mul_(2)  # not views of one buffer: in-place edits are allowed, as on the plain path
    weight = torch.ones(2, 3, requires_grad=True)  # an upstream gradient that is itself differentiable
    (grad,) = torch.autograd.grad((logp * weight).sum() + entropy.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.pow(2).sum().backward()  # a gradient penalty would need the second derivative


def test_bf16_logits_within_bf16_tolerance(kernel):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 9, 2100, generator=g) * 3).bfloat16()
    labels = torch.randint(0, 2100, (2, 6), generator=g)
    g_logp, g_entropy = torch.randn(2, 6, generator=g).double(), torch.randn(2, 6, generator=g).double()
    got = values_and_grad(kernel.logprobs_and_entropy, logits, labels, 0.8, g_logp, g_entropy)
    want = values_and_grad(reference64, logits, labels, 0.8, g_logp, g_entropy)
    # the statistics are float32 of the same bf16 inputs: float32-close; the gradient is stored in bf16
    assert (got[0] - want[0]).abs().max().item() < 1e-5
    assert (got[1] - want[1]).abs().max().item() < 1e-5
    assert torch.allclose(got[2], want[2], rtol=1e-2, atol=1e-2)


def test_deterministic(kernel):
    logits = torch.randn(5, 1300, generator=torch.Generator().manual_seed(2)).requires_grad_()
    labels = torch.arange(5)
    runs = []
    for _ in range(2):
        logp, entropy = kernel.logprobs_and_entropy(logits, labels, 0.9)
        (grad,) = torch.autograd.grad((logp + entropy).sum(), logits)
        runs.append((logp, entropy, grad))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_ops_dispatches_to_the_kernel_and_agrees_with_the_plain_path(kernel, monkeypatch):
    calls = []
    real = kernel.logprobs_and_entropy
    monkeypatch.setattr(kernel, "logprobs_and_entropy", lambda *a: calls.append(1) or real(*a))
    logits = torch.randn(2, 5, 300, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(4))
    via_kernel = ops.logprobs_and_entropy(logits, labels, 0.7)
    logp_kernel = ops.logprobs_from_logits(logits, labels, 0.7)
    assert len(calls) == 2
    monkeypatch.setenv("MINIRLHF_TRITON", "0")  # switched off: plain PyTorch
    plain = ops.logprobs_and_entropy(logits, labels, 0.7)
    assert len(calls) == 2
    assert torch.allclose(via_kernel[0], plain[0], atol=1e-6) and torch.allclose(via_kernel[1], plain[1], atol=1e-6)
    assert torch.allclose(logp_kernel, plain[0], atol=1e-6)


def test_availability_rule(kernel, monkeypatch):
    x = torch.zeros(2, 3)
    assert kernel.available(x) and kernel.available(x.bfloat16())
    assert not kernel.available(x.double())  # float64 (the gradchecks) stays on the plain path
    for off in ("0", ""):
        monkeypatch.setenv("MINIRLHF_TRITON", off)
        assert not kernel.available(x)
    monkeypatch.delenv("MINIRLHF_TRITON")
    assert not kernel.available(x) and ops._triton_kernel_for(x) is None  # opt-in: off by default
    monkeypatch.setenv("MINIRLHF_TRITON", "1")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not kernel.available(x)  # a CPU tensor without the interpreter
    assert ops._triton_kernel_for(x) is None


def test_bad_input_is_a_clear_error(kernel):
    with pytest.raises(ValueError, match=r"logits \(2, 3, 7\) do not match labels \(2, 4\)"):
        kernel.logprobs_and_entropy(torch.zeros(2, 3, 7), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kernel.logprobs_and_entropy(torch.zeros(2, 7), torch.zeros(2, dtype=torch.long), temperature=0.0)
    with pytest.raises(RuntimeError, match="float32/bf16/fp16"):  # float64 is for the plain path
        kernel.logprobs_and_entropy(torch.zeros(2, 7, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


def test_response_logprobs_through_a_model_match_the_plain_path(kernel, monkeypatch):
    # the call PPO and GRPO make: a tiny GPT, a left-padded row, a temperature; gradients into the trunk
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=1100))
    tokens = torch.randint(0, 1100, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4] = 0
    results = []
    for setting in ("1", "0"):  # kernel, then plain PyTorch
        monkeypatch.setenv("MINIRLHF_TRITON", setting)
        model.zero_grad()
        logp, entropy = response_logprobs(model, tokens, mask, 5, temperature=0.8, return_entropy=True, fused=False)
        (logp.sum() + 0.5 * entropy.sum()).backward()
        results.append((logp.detach(), entropy.detach(), model.transformer.h[0].attn.c_attn.weight.grad.clone()))
    for a, b in zip(*results):
        assert (a - b).abs().max().item() < 1e-5
