"""Tests for the preference-optimisation and GRPO losses in minirlhf.losses.

Expected values are written out by hand with the `math` module on 2-3 examples; the rest are invariants
(DPO = log 2 at the reference, cDPO symmetry, IPO's minimum, KTO's detached reference point) and float64
gradchecks at points away from clip boundaries and clamps.
"""

import math

import pytest
import torch

from minirlhf import losses as L

T = torch.tensor


def softplus(z: float) -> float:
    """-log sigmoid(-z) = log(1 + e^z), for the hand-written expectations."""
    return math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def close(a, b, tol=1e-10):
    a = torch.as_tensor(a).detach().to(torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# Two preference pairs: h = (pc - rc) - (pr - rr) = [1.0, -1.5].
PC, PR, RC, RR = [-1.0, -3.0], [-2.0, -1.0], [-1.5, -2.0], [-1.5, -1.5]


def pairs(dtype=torch.float64):
    return [T(v, dtype=dtype) for v in (PC, PR, RC, RR)]


# --------------------------------------------------------------------------------------------- DPO

def test_dpo_by_hand():
    loss, m = L.dpo_loss(*pairs(), beta=0.5)
    # beta * h = [0.5, -0.75]; -logsigmoid(z) = log(1 + e^-z)
    close(loss, (softplus(-0.5) + softplus(0.75)) / 2)
    close(m["chosen_rewards"], [0.5 * 0.5, 0.5 * -1.0])
    close(m["rejected_rewards"], [0.5 * -0.5, 0.5 * 0.5])
    close(m["margins"], [0.5, -0.75])
    close(m["accuracies"], [1.0, 0.0])
    assert all(not v.requires_grad for v in m.values())


def test_cdpo_by_hand():
    loss, _ = L.dpo_loss(*pairs(), beta=0.5, label_smoothing=0.2)
    expected = [0.8 * softplus(-z) + 0.2 * softplus(z) for z in (0.5, -0.75)]
    close(loss, sum(expected) / 2)


def test_dpo_is_log2_when_policy_equals_reference():
    logps = T([-3.0, -10.0, -0.5])
    for ls in (0.0, 0.1, 0.5):
        loss, m = L.dpo_loss(logps, logps - 1.0, logps, logps - 1.0, beta=0.1, label_smoothing=ls)
        close(loss.double(), math.log(2.0), tol=1e-6)
        assert m["accuracies"].sum() == 0  # ties count as wrong


def test_cdpo_zero_smoothing_is_dpo_and_half_is_symmetric():
    pc, pr, rc, rr = pairs()
    close(L.dpo_loss(pc, pr, rc, rr, 0.3, label_smoothing=0.0)[0], L.dpo_loss(pc, pr, rc, rr, 0.3)[0])
    # swapping chosen and rejected flips h; at eps = 0.5 the loss cannot tell
    a = L.dpo_loss(pc, pr, rc, rr, 0.3, label_smoothing=0.5)[0]
    b = L.dpo_loss(pr, pc, rr, rc, 0.3, label_smoothing=0.5)[0]
    close(a, b)
    assert not torch.isclose(L.dpo_loss(pc, pr, rc, rr, 0.3)[0], L.dpo_loss(pr, pc, rr, rc, 0.3)[0])


def test_dpo_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="dpo_loss"):
        L.dpo_loss(T([-1.0, -2.0]), T([-1.0]), T([-1.0, -2.0]), T([-1.0, -2.0]), beta=0.1)


# --------------------------------------------------------------------------------------------- IPO

def test_ipo_by_hand():
    loss, m = L.ipo_loss(*pairs(), tau=0.25)  # target 1/(2 tau) = 2
    close(loss, ((1.0 - 2.0) ** 2 + (-1.5 - 2.0) ** 2) / 2)
    close(m["margins"], [1.0, -1.5])
    close(m["chosen_rewards"], [0.25 * 0.5, 0.25 * -1.0])


def test_ipo_minimum_at_half_inverse_tau():
    tau = 0.1
    rc, rr = T([-4.0, -7.0], dtype=torch.float64), T([-5.0, -6.0], dtype=torch.float64)
    pr = rr.clone()
    pc = (rc + 1.0 / (2 * tau)).requires_grad_()  # h = 1/(2 tau) exactly
    loss, _ = L.ipo_loss(pc, pr, rc, rr, tau)
    (g,) = torch.autograd.grad(loss, pc)
    close(loss, 0.0)
    close(g, [0.0, 0.0])
    for d in (-0.3, 0.3):
        assert L.ipo_loss(pc.detach() + d, pr, rc, rr, tau)[0] > 0.05


def test_ipo_rejects_a_non_positive_tau_and_mismatched_shapes():
    for tau in (0.0, -0.5):  # the target 1/(2 tau) is undefined or negative
        with pytest.raises(ValueError, match=rf"^ipo_loss: tau must be > 0, got {tau}$"):
            L.ipo_loss(*pairs(), tau=tau)
    pc, pr, rc, rr = pairs()
    with pytest.raises(ValueError, match=r"^ipo_loss: inputs must have the same shape, got .*'ref_rejected_logps': "
                                         r"\(1,\)"):
        L.ipo_loss(pc, pr, rc, rr[:1], tau=0.5)


# --------------------------------------------------------------------------------------------- KTO

def test_kto_by_hand():
    beta = 0.5
    pc, rc = T([-1.0, -3.0], dtype=torch.float64), T([-1.5, -2.0], dtype=torch.float64)  # r = [0.5, -1.0]
    pr, rr = T([-2.0], dtype=torch.float64), T([-1.5], dtype=torch.float64)  # r = [-0.5]
    pkl, rkl = T([-2.0, -2.2], dtype=torch.float64), T([-2.5, -2.5], dtype=torch.float64)  # z0 = 0.4
    loss, m = L.kto_loss(pc, pr, pkl, rc, rr, rkl, beta, desirable_weight=1.0, undesirable_weight=1.5)
    expected = [1 - sigmoid(beta * (0.5 - 0.4)), 1 - sigmoid(beta * (-1.0 - 0.4)),
                1.5 * (1 - sigmoid(beta * (0.4 - (-0.5))))]
    close(loss, sum(expected) / 3)
    close(m["kl"], 0.4)
    close(m["chosen_rewards"], [0.25, -0.5])
    close(m["rejected_rewards"], [-0.25])


def test_kto_reference_point_clamped_at_zero():
    pc, rc = T([-1.0], dtype=torch.float64), T([-1.5], dtype=torch.float64)
    pr, rr = T([-2.0], dtype=torch.float64), T([-1.5], dtype=torch.float64)
    pkl, rkl = T([-4.0, -3.0], dtype=torch.float64), T([-2.0, -2.0], dtype=torch.float64)  # mean diff = -1.5
    loss, m = L.kto_loss(pc, pr, pkl, rc, rr, rkl, beta=1.0)
    close(m["kl"], 0.0)
    close(loss, ((1 - sigmoid(0.5)) + (1 - sigmoid(0.5))) / 2)


def test_kto_reference_point_carries_no_gradient():
    pc, rc = T([-1.0, -2.0], dtype=torch.float64, requires_grad=True), T([-1.5, -2.0], dtype=torch.float64)
    pr, rr = T([-2.0], dtype=torch.float64, requires_grad=True), T([-1.5], dtype=torch.float64)
    pkl = T([-1.0, -1.5], dtype=torch.float64, requires_grad=True)  # z0 = 0.75 > 0: not clamped
    rkl = T([-2.0, -2.0], dtype=torch.float64)
    loss, m = L.kto_loss(pc, pr, pkl, rc, rr, rkl, beta=0.5)
    close(m["kl"], 0.75)
    g_pc, g_pr, g_kl = torch.autograd.grad(loss, [pc, pr, pkl], allow_unused=True)
    assert g_kl is None or torch.all(g_kl == 0)
    assert torch.all(g_pc != 0) and torch.all(g_pr != 0)


def test_kto_one_side_empty():
    beta, z0 = 1.0, 0.2
    pkl, rkl = T([-1.8], dtype=torch.float64), T([-2.0], dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.float64)
    pc, rc = T([-1.0, -2.0], dtype=torch.float64), T([-1.5, -1.5], dtype=torch.float64)  # r = [0.5, -0.5]
    loss, m = L.kto_loss(pc, empty, pkl, rc, empty, rkl, beta)
    close(loss, ((1 - sigmoid(0.5 - z0)) + (1 - sigmoid(-0.5 - z0))) / 2)
    assert m["rejected_rewards"].numel() == 0
    loss, m = L.kto_loss(empty, pc, pkl, empty, rc, rkl, beta, undesirable_weight=2.0)
    close(loss, 2.0 * ((1 - sigmoid(z0 - 0.5)) + (1 - sigmoid(z0 + 0.5))) / 2)
    assert m["chosen_rewards"].numel() == 0
    with pytest.raises(ValueError, match="kto_loss"):
        L.kto_loss(empty, empty, pkl, empty, empty, rkl, beta)


def test_kto_rejects_an_empty_reference_point_and_mismatched_shapes():
    pc, rc = T([-1.0, -2.0], dtype=torch.float64), T([-1.5, -1.5], dtype=torch.float64)
    pr, rr = T([-2.0], dtype=torch.float64), T([-1.5], dtype=torch.float64)
    pkl, rkl = T([-1.8], dtype=torch.float64), T([-2.0], dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.float64)
    with pytest.raises(ValueError, match="^kto_loss: policy_kl_logps is empty; z0 needs at least one mismatched"):
        L.kto_loss(pc, pr, empty, rc, rr, empty, beta=0.5)
    with pytest.raises(ValueError, match=r"^kto_loss \(chosen\): inputs must have the same shape, got "
                                         r"\{'policy_chosen_logps': \(2,\), 'ref_chosen_logps': \(1,\)\}$"):
        L.kto_loss(pc, pr, pkl, rc[:1], rr, rkl, beta=0.5)
    with pytest.raises(ValueError, match=r"^kto_loss \(rejected\): .*'ref_rejected_logps': \(2,\)"):
        L.kto_loss(pc, pr, pkl, rc, rc, rkl, beta=0.5)
    with pytest.raises(ValueError, match=r"^kto_loss \(kl\): .*'ref_kl_logps': \(0,\)"):
        L.kto_loss(pc, pr, pkl, rc, rr, empty, beta=0.5)


# -------------------------------------------------------------------------------------------- ORPO

def naive_log1mexp(x: float) -> float:
    return math.log(1.0 - math.exp(x))


def test_log1mexp_matches_naive_where_naive_is_accurate():
    xs = [-0.1, -0.5, -0.69, -0.7, -1.0, -3.0, -10.0]
    close(L.log1mexp(T(xs, dtype=torch.float64)), [naive_log1mexp(x) for x in xs], tol=1e-12)


def test_log1mexp_near_zero_and_very_negative():
    # x -> 0-: log(1 - e^x) = log(-x) + x/2 + O(x^2); naive float32 gives -inf
    x32 = T([-1e-10])
    assert torch.isinf(torch.log(1 - torch.exp(x32)))
    close(L.log1mexp(x32).double(), math.log(1e-10) - 0.5e-10, tol=1e-6)
    close(L.log1mexp(T([-1e-10], dtype=torch.float64)), math.log(1e-10) - 0.5e-10, tol=1e-14)
    # x = -50: log(1 - e^-50) = -e^-50 - e^-100/2; the naive formula rounds it to 0
    assert naive_log1mexp(-50.0) == 0.0
    close(L.log1mexp(T([-50.0], dtype=torch.float64)), -math.exp(-50.0), tol=1e-30)
    assert L.log1mexp(T([-50.0], dtype=torch.float64)).item() < 0
    # gradients are finite on both branches, including at the float32 edge
    x = T([-1e-10, -0.3, -5.0, -50.0], requires_grad=True)
    (g,) = torch.autograd.grad(L.log1mexp(x).sum(), x)
    assert torch.isfinite(g).all()


def test_orpo_by_hand():
    c, r, lam = [-0.5, -1.2], [-1.0, -0.8], 0.1
    nll = [0.5, 1.2]

    def log_odds(p):
        return p - math.log(1.0 - math.exp(p))

    lo = [log_odds(ci) - log_odds(ri) for ci, ri in zip(c, r)]
    or_loss = (softplus(-lo[0]) + softplus(-lo[1])) / 2
    loss, m = L.orpo_loss(T(c, dtype=torch.float64), T(r, dtype=torch.float64), T(nll, dtype=torch.float64), lam)
    close(loss, sum(nll) / 2 + lam * or_loss)
    close(m["log_odds"], lo)
    close(m["or_loss"], or_loss)
    close(m["accuracies"], [1.0, 0.0])
    # a scalar chosen_nll (already averaged) gives the same loss
    loss_scalar, _ = L.orpo_loss(T(c, dtype=torch.float64), T(r, dtype=torch.float64),
                                 T(sum(nll) / 2, dtype=torch.float64), lam)
    close(loss_scalar, loss)


# ------------------------------------------------------------------------------------------- SimPO

def test_simpo_by_hand():
    c, r = T([-0.5, -1.2], dtype=torch.float64), T([-1.0, -0.8], dtype=torch.float64)
    loss, m = L.simpo_loss(c, r, beta=2.0, gamma=0.5)
    # beta (c - r) - gamma = [0.5, -1.3]
    close(loss, (softplus(-0.5) + softplus(1.3)) / 2)
    close(m["chosen_rewards"], [-1.0, -2.4])
    close(m["margins"], [1.0, -0.8])
    close(m["accuracies"], [1.0, 0.0])


def test_orpo_and_simpo_reject_mismatched_shapes():
    c, r = T([-0.5, -1.0], dtype=torch.float64), T([-0.7], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^orpo_loss: inputs must have the same shape, got "
                                         r"\{'chosen_mean_logps': \(2,\), 'rejected_mean_logps': \(1,\)\}$"):
        L.orpo_loss(c, r, -c, lam=0.1)
    with pytest.raises(ValueError, match=r"^simpo_loss: inputs must have the same shape, got "
                                         r"\{'chosen_mean_logps': \(2,\), 'rejected_mean_logps': \(1,\)\}$"):
        L.simpo_loss(c, r, beta=2.0, gamma=0.5)


# -------------------------------------------------------------------------------------------- GRPO

def grpo_case():
    """B=2, T=3. Row 0: A=+1, tokens with ratio 1.1, 1.5 (clipped), one masked. Row 1: A=-0.5, ratios 0.5
    (clipped), 1.0, 1.3 (ratio beyond 1+eps but A<0: the unclipped term is the min, no clipping)."""
    ratios = [[1.1, 1.5, 7.0], [0.5, 1.0, 1.3]]
    old = [[-1.0, -2.0, -0.3], [-0.7, -1.4, -2.5]]
    d_ref = [[0.2, -0.3, 5.0], [0.1, 0.0, -0.4]]  # logp - ref_logp
    logp = [[o + math.log(q) for o, q in zip(orow, qrow)] for orow, qrow in zip(old, ratios)]
    ref = [[lp - d for lp, d in zip(lrow, drow)] for lrow, drow in zip(logp, d_ref)]
    mask = [[1, 1, 0], [1, 1, 1]]
    adv = [1.0, -0.5]
    return ratios, d_ref, mask, adv, [T(v, dtype=torch.float64) for v in (logp, old, ref, adv, mask)]


def test_grpo_by_hand():
    ratios, d_ref, mask, adv, (logp, old, ref, A, m) = grpo_case()
    eps, beta = 0.2, 0.1

    def k3(d):
        return math.exp(-d) - 1.0 + d

    def surrogate(q, a):
        return -min(q * a, max(min(q, 1 + eps), 1 - eps) * a)

    rows = []
    for i in range(2):
        toks = [surrogate(ratios[i][t], adv[i]) + beta * k3(d_ref[i][t]) for t in range(3) if mask[i][t]]
        rows.append(sum(toks) / len(toks))
    loss, metrics = L.grpo_loss(logp, old, ref, A, m, epsilon=eps, beta=beta)
    close(loss, sum(rows) / 2)
    real = [(i, t) for i in range(2) for t in range(3) if mask[i][t]]
    close(metrics["kl"], sum(k3(d_ref[i][t]) for i, t in real) / len(real))
    close(metrics["clipfrac"], 2 / 5)  # row 0 token 1 and row 1 token 0
    # the clipped token alone, by hand: ratio 1.5, A = 1 -> -min(1.5, 1.2) = -1.2, no KL at beta = 0
    one = torch.zeros(1, 1, dtype=torch.float64)
    loss1, m1 = L.grpo_loss(one + math.log(1.5), one, one, T([1.0], dtype=torch.float64), torch.ones(1, 1), beta=0.0)
    close(loss1, -1.2)
    close(m1["clipfrac"], 1.0)


def test_grpo_masked_tokens_do_not_contribute():
    _, _, _, _, (logp, old, ref, A, m) = grpo_case()
    logp = logp.clone().requires_grad_()
    loss, metrics = L.grpo_loss(logp, old, ref, A, m)
    (g,) = torch.autograd.grad(loss, logp)
    assert g[0, 2] == 0 and torch.all(g[m.bool()] != 0)
    junk = lambda x: torch.where(m.bool(), x, x - 3.0)  # noqa: E731
    loss2, metrics2 = L.grpo_loss(junk(logp.detach()), junk(old), junk(ref), A, m)
    close(loss2, loss)
    close(metrics2["kl"], metrics["kl"])
    # a policy log-prob on the pad 95 nats below the reference's (k3's exp overflows float32), or a NaN
    # there: the loss, the KL and the gradient stay those of the real tokens
    for bad in (-95.0, float("nan")):
        lp = torch.where(m.bool(), logp.detach(), torch.full_like(logp, bad)).float().requires_grad_()
        loss3, metrics3 = L.grpo_loss(lp, old.float(), ref.float(), A.float(), m)
        (g3,) = torch.autograd.grad(loss3, lp)
        close(loss3, loss, tol=1e-5)
        close(metrics3["kl"], metrics["kl"], tol=1e-5)
        torch.testing.assert_close(g3, g.float(), rtol=1e-5, atol=1e-6)  # finite, and 0 on the pad


def test_grpo_beta_zero_drops_kl():
    ratios, _, mask, adv, (logp, old, ref, A, m) = grpo_case()
    eps = 0.2
    rows = []
    for i in range(2):
        toks = [-min(ratios[i][t] * adv[i], max(min(ratios[i][t], 1 + eps), 1 - eps) * adv[i])
                for t in range(3) if mask[i][t]]
        rows.append(sum(toks) / len(toks))
    loss, metrics = L.grpo_loss(logp, old, ref, A, m, epsilon=eps, beta=0.0)
    close(loss, sum(rows) / 2)
    assert metrics["kl"] > 0  # still reported
    # and the reference no longer matters
    close(L.grpo_loss(logp, old, ref + 1.0, A, m, epsilon=eps, beta=0.0)[0], loss)


def test_grpo_rejects_bad_advantage_shape():
    _, _, _, _, (logp, old, ref, A, m) = grpo_case()
    with pytest.raises(ValueError, match="grpo_loss"):
        L.grpo_loss(logp, old, ref, A.unsqueeze(-1).expand(2, 3), m)


# --------------------------------------------------------------------------------- gradcheck, range

def rand(*shape, lo=-3.0, hi=-0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)).requires_grad_()


def test_gradcheck_all_losses():
    B = 4
    pc, pr, rc, rr = (rand(B, seed=s) for s in range(4))
    gc = torch.autograd.gradcheck
    assert gc(lambda *x: L.dpo_loss(*x, beta=0.3)[0], (pc, pr, rc, rr))
    assert gc(lambda *x: L.dpo_loss(*x, beta=0.3, label_smoothing=0.1)[0], (pc, pr, rc, rr))
    assert gc(lambda *x: L.ipo_loss(*x, tau=0.5)[0], (pc, pr, rc, rr))
    pkl, rkl = rand(3, seed=5).detach(), rand(3, seed=6).detach()
    assert gc(lambda a, b, c, d: L.kto_loss(a, b, pkl, c, d, rkl, beta=0.5, undesirable_weight=1.3)[0],
              (pc, pr, rc, rr))
    nll = rand(B, lo=0.5, hi=3.0, seed=7)
    assert gc(lambda c, r, n: L.orpo_loss(c, r, n, lam=0.2)[0], (pc, pr, nll))
    near0 = rand(B, lo=-0.6, hi=-0.01, seed=8)  # log1mexp's other branch
    assert gc(lambda c, r: L.orpo_loss(c, r, nll.detach(), lam=0.2)[0], (near0, pr))
    assert gc(lambda c, r: L.simpo_loss(c, r, beta=2.0, gamma=0.3)[0], (pc, pr))
    # GRPO: ratios away from 1 +- eps (some well inside, some well outside the clip range)
    _, _, _, _, (logp, old, ref, A, m) = grpo_case()
    assert gc(lambda lp, o, r: L.grpo_loss(lp, o, r, A, m, epsilon=0.2, beta=0.04)[0],
              (logp.clone().requires_grad_(), old.clone().requires_grad_(), ref.clone().requires_grad_()))


def test_large_magnitude_inputs_stay_finite():
    big = T([-1e4, -2.0, -5e3])
    small = T([-1.0, -1e4, -4e3])
    for dtype in (torch.float32, torch.bfloat16):
        a, b = big.to(dtype).requires_grad_(), small.to(dtype).requires_grad_()
        losses = [
            L.dpo_loss(a, b, small.to(dtype), big.to(dtype), beta=1.0, label_smoothing=0.1)[0],
            L.ipo_loss(a, b, small.to(dtype), big.to(dtype), tau=0.1)[0],
            L.kto_loss(a, b, a, small.to(dtype), big.to(dtype), b, beta=1.0)[0],
            L.orpo_loss(a, b, -a, lam=0.5)[0],
            L.simpo_loss(a, b, beta=10.0, gamma=1.0)[0],
        ]
        for loss in losses:
            assert loss.dtype == torch.float32 and torch.isfinite(loss)
            ga, gb = torch.autograd.grad(loss, [a, b])
            assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    # ORPO at log-probs of exactly 0 (probability 1) and below float32 resolution stays finite
    c = T([0.0, -1e-30], requires_grad=True)
    loss, _ = L.orpo_loss(c, T([-2.0, -3.0]), T(0.1), lam=1.0)
    (g,) = torch.autograd.grad(loss, c)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    # GRPO with log-probs tens of nats apart
    logp = T([[-80.0, -1.0], [-0.01, -40.0]], requires_grad=True)
    old, ref = T([[-40.0, -30.0], [-20.0, -10.0]]), T([[-30.0, -50.0], [-10.0, -0.5]])
    loss, metrics = L.grpo_loss(logp, old, ref, T([1.5, -2.0]), torch.ones(2, 2))
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and torch.isfinite(metrics["kl"])
