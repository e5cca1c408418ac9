"""fused_linear_logprobs (chunked LM head + log-probs, recomputing backward) vs the plain reference.

The reference is `logprobs_from_logits(hidden @ weight.T, labels, temperature)` (and
`entropy_from_logits` of the same tempered logits); the fused op must give the same values and the
same gradients w.r.t. hidden and weight, for every chunk size, in float64, float32 and bf16.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minirlhf import ops
from minirlhf.config import ModelConfig
from minirlhf.engine import response_logprobs, sequence_logprobs
from minirlhf.model import GPT


def make_inputs(N=13, C=8, V=37, dtype=torch.float64, seed=0, lead=None):
    g = torch.Generator().manual_seed(seed)
    shape = lead if lead is not None else (N,)
    hidden = torch.randn(*shape, C, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = torch.randn(V, C, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    labels = torch.randint(0, V, shape, generator=g)
    return hidden, weight, labels


def reference(hidden, weight, labels, temperature):
    logits = ops.upcast(hidden @ weight.T)  # (..., V)
    logp = ops.logprobs_from_logits(logits, labels, temperature)
    entropy = ops.entropy_from_logits(logits / temperature)
    return logp, entropy


def values_and_grads(fn, hidden, weight, labels, temperature, with_entropy, seed=1):
    """Run fn, backprop a random combination of the outputs, return (outputs..., dhidden, dweight)."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    logp, entropy = fn(h, w, labels, temperature)
    g = torch.Generator().manual_seed(seed)
    loss = (logp * torch.randn(logp.shape, generator=g, dtype=logp.dtype)).sum()
    if with_entropy:
        loss = loss + (entropy * torch.randn(entropy.shape, generator=g, dtype=entropy.dtype)).sum()
    loss.backward()
    return logp.detach(), entropy.detach(), h.grad, w.grad


def fused(chunk_size):
    def fn(h, w, y, t):
        return ops.fused_linear_logprobs(h, w, y, t, chunk_size=chunk_size, return_entropy=True)
    return fn


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 13, 64])  # 4 and 5 do not divide N = 13
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_values_and_gradients_match_reference(dtype, tol, chunk_size, temperature, with_entropy):
    hidden, weight, labels = make_inputs(dtype=dtype)
    want = values_and_grads(reference, hidden, weight, labels, temperature, with_entropy)
    got = values_and_grads(fused(chunk_size), hidden, weight, labels, temperature, with_entropy)
    for name, a, b in zip(["logp", "entropy", "d hidden", "d weight"], got, want):
        assert a.dtype == b.dtype, name
        scale = max(1.0, b.abs().max().item())  # tolerance relative to the largest entry (logp reaches -20)
        assert (a - b).abs().max().item() < tol * scale, name


def test_bf16_within_bf16_tolerance():
    hidden, weight, labels = make_inputs(N=40, C=32, V=301, dtype=torch.bfloat16)
    want = values_and_grads(reference, hidden, weight, labels, 0.9, True)
    got = values_and_grads(fused(7), hidden, weight, labels, 0.9, True)
    for name, a, b in zip(["logp", "entropy", "d hidden", "d weight"], got, want):
        assert a.dtype == b.dtype, name
        scale = b.float().abs().max().item()
        assert (a.float() - b.float()).abs().max().item() <= 2e-2 * scale, name  # bf16: 8 mantissa bits


def test_bf16_autocast_matches_reference_under_autocast():
    hidden, weight, labels = make_inputs(N=20, C=16, V=100, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = values_and_grads(reference, hidden, weight, labels, 1.0, False)
        got = values_and_grads(fused(6), hidden, weight, labels, 1.0, False)
    for name, a, b in zip(["logp", "d hidden", "d weight"], [got[0], got[2], got[3]], [want[0], want[2], want[3]]):
        assert a.dtype == b.dtype == torch.float32, name  # grads come back in the parameters' dtype
        assert (a - b).abs().max().item() <= 2e-2 * b.abs().max().item(), name


def test_gradcheck_float64():
    hidden, weight, labels = make_inputs(N=5, C=3, V=7)

    def fn(h, w):
        logp, entropy = ops.fused_linear_logprobs(h, w, labels, temperature=0.8, chunk_size=2, return_entropy=True)
        return logp, entropy

    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_leading_shape_and_noncontiguous_slice():
    hidden, weight, labels = make_inputs(lead=(3, 6))
    h = hidden[:, 1:]  # a strided slice, as in logits[:, P-1:-1]
    want = ops.logprobs_from_logits(h @ weight.T, labels[:, 1:])
    got = ops.fused_linear_logprobs(h, weight, labels[:, 1:], chunk_size=4)
    assert got.shape == (3, 5)
    assert (got - want).abs().max().item() < 1e-12


def test_only_needed_gradients_and_frozen_weight():
    hidden, weight, labels = make_inputs()
    w = weight.detach()  # a frozen LM head
    h = hidden.detach().clone().requires_grad_()
    ops.fused_linear_logprobs(h, w, labels, chunk_size=3).sum().backward()
    h_ref = hidden.detach().clone().requires_grad_()
    ops.logprobs_from_logits(h_ref @ w.T, labels).sum().backward()
    assert (h.grad - h_ref.grad).abs().max().item() < 1e-12


def test_a_second_derivative_is_refused_not_wrong():
    # the backward is written by hand (in place, from recomputed logits): create_graph must raise
    # (before, it gave a wrong number with the entropy and an in-place error deep inside autograd without)
    hidden, weight, labels = make_inputs()
    upstream = torch.ones(labels.shape, dtype=hidden.dtype, requires_grad=True)  # a differentiable gradient
    for with_entropy in (False, True):
        out = ops.fused_linear_logprobs(hidden, weight, labels, 0.7, chunk_size=4, return_entropy=with_entropy)
        loss = (out[0] * upstream).sum() + out[1].sum() if with_entropy else (out * upstream).sum()
        (g,) = torch.autograd.grad(loss, hidden, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            g.pow(2).sum().backward()  # a gradient penalty needs the second derivative


def test_entropy_gradient_alone():
    hidden, weight, labels = make_inputs()
    h1, w1 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    _, ent = ops.fused_linear_logprobs(h1, w1, labels, chunk_size=5, return_entropy=True)
    ent.sum().backward()
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ops.entropy_from_logits(h2 @ w2.T).sum().backward()
    assert (h1.grad - h2.grad).abs().max().item() < 1e-12
    assert (w1.grad - w2.grad).abs().max().item() < 1e-12


def test_bad_shapes_are_clear_errors():
    hidden, weight, labels = make_inputs()
    with pytest.raises(ValueError, match="does not match labels"):
        ops.fused_linear_logprobs(hidden, weight, labels[:-1])
    with pytest.raises(ValueError, match="is not"):
        ops.fused_linear_logprobs(hidden, weight.T, labels)
    with pytest.raises(ValueError, match="hidden is torch.float32"):
        ops.fused_linear_logprobs(hidden.float(), weight, labels)


def test_chunk_size_below_one_is_a_clear_error():
    hidden, weight, labels = make_inputs()
    for bad in (-1, 0):  # 0 is an error too, not a silent "use the default" (None means the default)
        with pytest.raises(ValueError, match=rf"^fused_linear_logprobs: chunk_size must be >= 1, got {bad}$"):
            ops.fused_linear_logprobs(hidden, weight, labels, chunk_size=bad)


@pytest.mark.parametrize("fused_flag", [False, True])
def test_linear_logprobs_dispatch_agrees(fused_flag):
    hidden, weight, labels = make_inputs(lead=(2, 5))
    logp, ent = ops.linear_logprobs(hidden, weight, labels, 0.7, return_entropy=True, fused=fused_flag)
    want_logp, want_ent = reference(hidden, weight, labels, 0.7)
    assert (logp - want_logp).abs().max().item() < 1e-12
    assert (ent - want_ent).abs().max().item() < 1e-12


def test_dispatch_rule_by_vocab_size():
    assert not ops.use_fused_logprobs(ops.FUSED_VOCAB_THRESHOLD - 1)
    assert ops.use_fused_logprobs(ops.FUSED_VOCAB_THRESHOLD)
    assert ops.use_fused_logprobs(100, fused=True) and not ops.use_fused_logprobs(10**6, fused=False)


def count_fused_calls(monkeypatch):
    """Wrap ops.fused_linear_logprobs (the op the engine's fused path runs) with a call counter."""
    calls = []
    real = ops.fused_linear_logprobs

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "fused_linear_logprobs", counted)
    return calls


def test_response_logprobs_fused_equals_plain_through_the_model(monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=53)).double()
    tokens = torch.randint(0, 53, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4] = 0  # a left-padded row
    calls = count_fused_calls(monkeypatch)
    results = []
    for flag in (False, True):
        model.zero_grad()
        before = len(calls)
        logp, ent = response_logprobs(model, tokens, mask, 5, temperature=0.8, return_entropy=True, fused=flag)
        assert len(calls) - before == int(flag)  # the path asked for is the path taken
        (logp.sum() + ent.sum()).backward()
        results.append((logp.detach(), ent.detach(), model.lm_head.weight.grad.clone(),
                        model.transformer.h[0].attn.c_attn.weight.grad.clone()))
    assert results[0][0].shape == (3, 7)
    for a, b in zip(*results):
        assert (a - b).abs().max().item() < 1e-10


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any op creates while active, forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_full_logits_never_exist_forward_or_backward():
    N, C, V, chunk = 64, 5, 97, 8
    hidden, weight, labels = make_inputs(N=N, C=C, V=V)
    with LargestTensor() as fused_mode:
        logp, ent = ops.fused_linear_logprobs(hidden, weight, labels, chunk_size=chunk, return_entropy=True)
        (logp.sum() + ent.sum()).backward()
    with LargestTensor() as naive_mode:
        ops.logprobs_from_logits(hidden @ weight.T, labels).sum().backward()
    assert naive_mode.largest >= N * V  # the reference does hold (N, V) tensors: the probe sees them
    assert fused_mode.largest <= max(chunk * V, V * C, N * C)  # one chunk of logits, or an input's size


@pytest.mark.parametrize("fused_flag", [False, True])
def test_sequence_logprobs_every_next_token(fused_flag, monkeypatch):
    torch.manual_seed(1)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=29)).double()
    tokens = torch.randint(0, 29, (2, 9))
    want = ops.logprobs_from_logits(model(tokens)[:, :-1], tokens[:, 1:])  # (B, T-1): DPO's per-token log-probs
    calls = count_fused_calls(monkeypatch)
    got = sequence_logprobs(model, tokens, fused=fused_flag)
    assert len(calls) == int(fused_flag)  # the path asked for is the path taken
    assert got.shape == (2, 8) and (got - want).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="start=0"):
        sequence_logprobs(model, tokens, start=0)
