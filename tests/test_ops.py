"""ops: masked statistics, log-probs, entropy and KL estimators vs hand computation and gradcheck."""

import math

import pytest
import torch

from minirlhf import ops

X = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, -8.0]], dtype=torch.float64)
M = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_masked_mean_sum_by_hand():
    assert ops.masked_sum(X, M).item() == 1 + 2 + 3 + 4
    assert ops.masked_mean(X, M).item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert ops.masked_mean(X, M, dim=1).tolist() == pytest.approx([2.0, 4.0])
    assert ops.masked_mean(X, M.bool()).item() == pytest.approx(2.5)  # bool masks too


def test_a_mask_selects_it_never_weights():
    # any non-zero entry keeps its element (as `select` does), so a mask of 0.5s gives the 0/1 mask's mean
    x = torch.tensor([2.0, 4.0, 100.0], dtype=torch.float64)
    half = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    assert ops.masked_mean(x, half).item() == 3.0 == ops.masked_mean(x, half.bool()).item()
    assert ops.masked_var(x, half).item() == pytest.approx(2.0)  # (1 + 1) / (2 - 1)


def test_log_probs_are_float32_at_least():
    # bf16 logits: the log-softmax runs in float32 (bf16 keeps 8 bits, too few for PPO's ratios)
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0)).bfloat16()
    labels = torch.tensor([1, 2, 3])
    logp = ops.logprobs_from_logits(logits, labels)
    assert logp.dtype == torch.float32
    assert torch.equal(logp, torch.log_softmax(logits.float(), -1).gather(-1, labels[:, None]).squeeze(-1))


def test_masked_values_never_leak_not_even_inf_or_nan():
    # x * 0 would turn an inf or NaN under the mask into NaN; selecting keeps them out, gradient included
    for bad in (float("inf"), float("-inf"), float("nan")):
        x = X.clone()
        x[0, 3] = x[1, 2] = bad
        x.requires_grad_()
        assert ops.masked_sum(x, M).item() == 1 + 2 + 3 + 4
        assert ops.masked_mean(x, M, dim=1).tolist() == pytest.approx([2.0, 4.0])
        (g,) = torch.autograd.grad(ops.masked_mean(x, M), x)
        assert g.tolist() == [[0.25, 0.25, 0.25, 0.0], [0.25, 0.0, 0.0, 0.0]]
        w = ops.masked_whiten(x.detach(), M)
        assert w[0, 3] == 0 and w[1, 2] == 0 and torch.isfinite(w).all()


def test_masked_var_is_bessel_corrected():
    vals = [1.0, 2.0, 3.0, 4.0]
    mean = sum(vals) / 4
    unbiased = sum((v - mean) ** 2 for v in vals) / 3
    assert ops.masked_var(X, M).item() == pytest.approx(unbiased)
    assert ops.masked_var(X, M, unbiased=False).item() == pytest.approx(unbiased * 3 / 4)
    with pytest.raises(ValueError, match="at least 2"):
        ops.masked_var(X, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))


def test_masked_whiten():
    w = ops.masked_whiten(X, M)
    assert ops.masked_mean(w, M).item() == pytest.approx(0.0, abs=1e-12)
    assert ops.masked_var(w, M).item() == pytest.approx(1.0, rel=1e-6)
    assert w[0, 3] == 0 and w[1, 1:].abs().sum() == 0  # masked positions are zeroed, never leak
    w2 = ops.masked_whiten(X, M, shift_mean=False)
    assert ops.masked_mean(w2, M).item() == pytest.approx(2.5)


def test_logprobs_from_logits_by_hand_and_temperature():
    logits = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    labels = torch.tensor([[2]])
    z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert ops.logprobs_from_logits(logits, labels).item() == pytest.approx(3 - z)
    t = 0.5
    zt = math.log(math.exp(2) + math.exp(4) + math.exp(6))
    assert ops.logprobs_from_logits(logits, labels, temperature=t).item() == pytest.approx(6 - zt)


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_logprobs_at_a_temperature_at_or_below_zero_are_an_error_not_nan(temperature):
    logits, labels = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    with pytest.raises(ValueError, match="logprobs_from_logits: temperature must be > 0"):
        ops.logprobs_from_logits(logits, labels, temperature)
    with pytest.raises(ValueError, match="logprobs_and_entropy: temperature must be > 0"):
        ops.logprobs_and_entropy(logits, labels, temperature)
    for fused in (False, True):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            ops.linear_logprobs(torch.randn(2, 3, 4), torch.randn(5, 4), labels, temperature, fused=fused)


def test_logprobs_gradcheck():
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))
    assert torch.autograd.gradcheck(lambda z: ops.logprobs_from_logits(z, labels, 0.7), (logits,))


def test_entropy_by_hand_and_uniform():
    assert ops.entropy_from_logits(torch.zeros(7, dtype=torch.float64)).item() == pytest.approx(math.log(7))
    logits = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)  # p = (1/4, 3/4)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert ops.entropy_from_logits(logits).item() == pytest.approx(expected)
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.entropy_from_logits, (z,))


def test_entropy_with_masked_and_large_logits():
    # a -inf logit (a top-k / masked token) adds nothing: the entropy of the remaining tokens, gradient finite
    z = torch.tensor([[0.0, math.log(3.0), float("-inf")]], dtype=torch.float64, requires_grad=True)
    h = ops.entropy_from_logits(z)
    assert h.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    (g,) = torch.autograd.grad(h.sum(), z)
    assert torch.isfinite(g).all() and g[0, 2] == 0
    # float32 logits of order 1e3 (or low temperatures) keep their digits: compared with float64
    # (logsumexp(z) - sum p z, the same in exact arithmetic, is off by 4e-3 here and goes negative)
    z = (torch.randn(200, 50, generator=torch.Generator().manual_seed(0)) * 3 + 1000) / 0.05  # (200, 50) float32
    got, want = ops.entropy_from_logits(z), ops.entropy_from_logits(z.double())
    assert (got >= 0).all() and torch.allclose(got.double(), want, atol=1e-5)


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5), math.log(0.2)], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25), math.log(0.4)], dtype=torch.float64)
    r = [math.log(0.5 / 0.25), math.log(0.2 / 0.4)]
    assert ops.kl_k1(logp, ref).tolist() == pytest.approx(r)
    assert ops.kl_k2(logp, ref).tolist() == pytest.approx([x * x / 2 for x in r])
    assert ops.kl_k3(logp, ref).tolist() == pytest.approx([(math.exp(-x) - 1) + x for x in r])
    assert (ops.kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()
    tiny = torch.tensor([1e-9], dtype=torch.float64)  # expm1 keeps precision near zero
    assert ops.kl_k3(tiny, torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(5e-19, rel=1e-6)


def test_kl_estimators_are_unbiased_for_exact_kl():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    exact = (p * (p / q).log()).sum()
    # expectation under p of k1 and k3 equals KL(p||q) exactly (sum over the support)
    k1 = (p * ops.kl_k1(p.log(), q.log())).sum()
    k3 = (p * ops.kl_k3(p.log(), q.log())).sum()
    assert k1.item() == pytest.approx(exact.item()) and k3.item() == pytest.approx(exact.item())


def test_pearson_correlation_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    y = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    # centred: (-1, 0, 1) and (-1, 1, 0): covariance sum 1, norms sqrt(2) each -> 1/2
    assert ops.pearson_correlation(x, y).item() == pytest.approx(0.5)
    assert ops.pearson_correlation(x, 3 * x + 7).item() == pytest.approx(1.0)
    assert ops.pearson_correlation(x, -x).item() == pytest.approx(-1.0)
    assert ops.pearson_correlation(x, torch.full_like(x, 2.0)).item() == 0.0  # a constant: 0, not NaN
    a, b = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    naive = torch.corrcoef(torch.stack([a, b]))[0, 1]
    assert ops.pearson_correlation(a, b).item() == pytest.approx(naive.item(), abs=1e-12)
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: ops.pearson_correlation(z, b), (a,))
