"""Rules of minirlhf.rl and minirlhf.losses that the by-hand tests in test_rl.py, test_losses.py and
test_preference_losses.py leave open: inf or NaN on pads, input validation, defaults, and metrics that are
not checked elsewhere. Expected values are written out by hand (float64 unless the case needs float32)."""

import math

import pytest
import torch

from minirlhf import losses as L
from minirlhf.rl import AdaptiveKLController, Rollout, compute_gae, group_advantages, shape_rewards

D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


def softplus(z: float) -> float:
    """-log sigmoid(-z) = log(1 + e^z)."""
    return math.log1p(math.exp(z))


# ------------------------------------------------------------------------------------------- rl.py


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("bad", [-math.inf, math.nan])
def test_shape_rewards_ignores_the_reference_on_pads(estimator, bad):
    """A reference log-prob of -inf or NaN on a pad (its KL is inf or NaN) must not reach the pad's reward."""
    logp, ref = t([-1.0, -2.0, -0.5, -3.0]), t([-1.5, -1.0, -0.5, bad])
    r = shape_rewards(t(2.0), logp, ref, t([1, 1, 1, 0]), 0.1, kl_estimator=estimator)
    # log-ratios on the real tokens: 0.5, -1.0, 0.0; k3(x) = e^-x - 1 + x
    kl = [0.5, -1.0] if estimator == "k1" else [math.exp(-0.5) - 0.5, math.e - 2.0]
    assert r.tolist()[0] == pytest.approx([-0.1 * kl[0], -0.1 * kl[1], 2.0, 0.0])


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_gae_ignores_an_inf_or_nan_reward_on_a_pad(bad):
    """A pad's reward of inf or NaN (an overflowed KL there) stays out of every real token's advantage."""
    adv, ret = compute_gae(t([0.1, -0.2, 1.0, bad]), t([0.5, 0.2, 0.4, 0.0]), t([1, 1, 1, 0]), gamma=0.9, lam=0.95)
    # delta = [0.1 + 0.9 * 0.2 - 0.5, -0.2 + 0.9 * 0.4 - 0.2, 1.0 - 0.4] = [-0.22, -0.04, 0.6], gamma * lam = 0.855
    # A_2 = 0.6; A_1 = -0.04 + 0.855 * 0.6 = 0.473; A_0 = -0.22 + 0.855 * 0.473 = 0.184415
    assert adv.tolist()[0] == pytest.approx([0.184415, 0.473, 0.6, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.684415, 0.673, 1.0, 0.0])


@pytest.mark.parametrize("shape", [(3,), (2, 3, 1)])
def test_gae_rejects_inputs_that_are_not_b_by_n(shape):
    """(N,) or (B, N, K) inputs are one ValueError naming compute_gae, not an IndexError or a silent result."""
    x = torch.zeros(shape, dtype=D)
    with pytest.raises(ValueError, match=r"^compute_gae: .* must all be \(B, N\)$"):
        compute_gae(x, x, torch.ones(shape), 1.0, 0.95)


@pytest.mark.parametrize("target, horizon", [(0.0, 100), (-6.0, 100), (6.0, 0), (6.0, -100)])
def test_adaptive_kl_controller_rejects_a_non_positive_target_or_horizon(target, horizon):
    """target = 0 divides by zero in `update`; horizon <= 0 divides by zero or runs the controller backwards."""
    with pytest.raises(ValueError, match=r"^AdaptiveKLController: target \(.*\) and horizon \(.*\) must be > 0$"):
        AdaptiveKLController(0.1, target, horizon)


@pytest.mark.parametrize("group_size", [0, -2])
def test_group_advantages_rejects_a_non_positive_group_size(group_size):
    """group_size 0 or negative is the documented ValueError, not a ZeroDivisionError or a view error."""
    with pytest.raises(ValueError, match=rf"^group_advantages: batch size 4 is not a multiple of "
                                         rf"group_size={group_size}$"):
        group_advantages(torch.zeros(4), group_size, scale=False)


def test_rollout_tokens_and_attention_mask_put_the_prompt_first_in_the_prompt_masks_dtype():
    """Rollout.tokens / attention_mask: prompt columns then response columns, the mask in the prompt mask's dtype."""
    z = torch.zeros(1, 2)
    ro = Rollout(query=torch.tensor([[0, 5, 6]]), query_mask=torch.tensor([[0, 1, 1]]),
                 response=torch.tensor([[7, 0]]), response_mask=torch.tensor([[1.0, 0.0]]),
                 logprobs=z, ref_logprobs=z, values=z, scores=torch.zeros(1))
    assert ro.tokens.tolist() == [[0, 5, 6, 7, 0]]
    assert ro.attention_mask.dtype == torch.long and ro.attention_mask.tolist() == [[0, 1, 1, 1, 0]]


# --------------------------------------------------------------------------------------- losses.py


def test_length_disentangle_counts_a_negative_head_overlap_as_overlap():
    """|w_q . w_l|: heads with a dot product of -1 overlap as much as +1 and must not lower the loss."""
    q, n = t(1.0, -2.0, 1.0), t(3.0, 2.0, 1.0)  # centred: (1, -2, 1) . (1, 0, -1) = 0 -> corr(q, n) = 0
    loss, m = L.length_disentangle_loss(q, n, n, t(1.0, 2.0), t(-3.0, 1.0))  # length head = lengths: corr 1
    assert m["head_overlap"].item() == pytest.approx(1.0)  # |1 * -3 + 2 * 1|
    assert loss.item() == pytest.approx(0.0 - 1.0 + 1.0, abs=1e-6)


def test_ppo_value_loss_with_an_infinite_cliprange_is_exactly_the_plain_loss():
    """cliprange_value=inf means no clipping: V_old + (V - V_old) rounding off V (0.8 + (-2.9 - 0.8) != -2.9)
    must not count as a clipped token."""
    values, old, returns = t([-2.9, 1.0]), t([0.8, 0.5]), t([0.0, 0.0])
    loss, m = L.ppo_value_loss(values, old, returns, t([1, 1]), cliprange_value=float("inf"))
    assert m["clipfrac"].item() == 0.0
    assert loss.item() == pytest.approx(0.5 * (2.9 ** 2 + 1.0) / 2)


def test_ipo_metrics_by_hand():
    """IPO's rejected_rewards are tau * (pr - rr), and a pair with h = 0 (a tie) is not counted as correct."""
    pc, pr, rc, rr = t(-1.0, -2.0), t(-2.0, -3.0), t(-1.5, -2.0), t(-1.5, -3.0)
    # chosen log-ratios [0.5, 0.0], rejected [-0.5, 0.0] -> h = [1.0, 0.0]; target 1/(2 tau) = 2
    loss, m = L.ipo_loss(pc, pr, rc, rr, tau=0.25)
    assert loss.item() == pytest.approx(((1.0 - 2.0) ** 2 + (0.0 - 2.0) ** 2) / 2)
    assert m["chosen_rewards"].tolist() == pytest.approx([0.125, 0.0])
    assert m["rejected_rewards"].tolist() == pytest.approx([-0.125, 0.0])
    assert m["margins"].tolist() == pytest.approx([1.0, 0.0])
    assert m["accuracies"].tolist() == [1.0, 0.0]


def test_orpo_nll_metric_and_a_tied_pair():
    """ORPO logs the mean chosen NLL as `nll`; a pair whose chosen and rejected log-probs tie is not correct."""
    c, r, nll = t(-0.5, -1.0), t(-1.0, -1.0), t(0.5, 1.5)
    loss, m = L.orpo_loss(c, r, nll, lam=0.1)
    lo = (-0.5 - math.log(1 - math.exp(-0.5))) - (-1.0 - math.log(1 - math.exp(-1.0)))  # second pair: 0
    assert m["log_odds"].tolist() == pytest.approx([lo, 0.0])
    assert m["nll"].item() == pytest.approx(1.0)
    assert m["or_loss"].item() == pytest.approx((softplus(-lo) + math.log(2.0)) / 2)
    assert loss.item() == pytest.approx(1.0 + 0.1 * (softplus(-lo) + math.log(2.0)) / 2)
    assert m["accuracies"].tolist() == [1.0, 0.0]


def test_simpo_metrics_by_hand():
    """SimPO's rejected_rewards are beta * r, margins leave gamma out, and a tie is not counted as correct."""
    loss, m = L.simpo_loss(t(-0.5, -1.0), t(-1.0, -1.0), beta=2.0, gamma=0.5)
    # beta * (c - r) - gamma = [0.5, -0.5]
    assert loss.item() == pytest.approx((softplus(-0.5) + softplus(0.5)) / 2)
    assert m["chosen_rewards"].tolist() == pytest.approx([-1.0, -2.0])
    assert m["rejected_rewards"].tolist() == pytest.approx([-2.0, -2.0])
    assert m["margins"].tolist() == pytest.approx([1.0, 0.0])
    assert m["accuracies"].tolist() == [1.0, 0.0]


def test_grpo_beta_zero_ignores_a_k3_that_overflows():
    """beta = 0 drops the KL term: a real token 100 nats below the reference (k3 = inf in float32) changes nothing."""
    logp = torch.tensor([[-100.0, -1.0]], requires_grad=True)
    loss, _ = L.grpo_loss(logp, logp.detach(), torch.tensor([[0.0, -1.0]]), torch.tensor([2.0]), torch.ones(1, 2),
                          beta=0.0)
    (g,) = torch.autograd.grad(loss, logp)
    # ratio 1 on both tokens: per token -A = -2; d/dlogp of -A * ratio / 2 tokens = -1
    assert loss.item() == -2.0
    assert g.tolist() == [[-1.0, -1.0]]


def test_grpo_defaults_are_epsilon_02_and_beta_004():
    """Without epsilon and beta, grpo_loss clips at 0.2 and weighs k3 by 0.04 (DeepSeekMath's values)."""
    old = t([-1.0])
    logp = old + math.log(1.15)  # ratio 1.15: inside 1 +- 0.2, outside 1 +- 0.1
    ref = logp - 0.5  # log pi / pi_ref = 0.5: k3 = e^-0.5 - 1 + 0.5
    loss, m = L.grpo_loss(logp, old, ref, t(1.0), torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.15 + 0.04 * (math.exp(-0.5) - 0.5))
    assert m["clipfrac"].item() == 0.0



@pytest.mark.parametrize("shape", [(3,), (1, 3, 1)])
def test_grpo_rejects_logprobs_that_are_not_b_by_t(shape):
    """(T,) or (B, T, 1) log-probs with (B,) advantages are the documented ValueError, not an IndexError or a
    silently broadcast loss."""
    x = torch.zeros(shape, dtype=D)
    with pytest.raises(ValueError, match=r"^grpo_loss: expected logprobs \(B, T\) and advantages \(B,\)"):
        L.grpo_loss(x, x, x, torch.zeros(shape[0], dtype=D), torch.ones(shape))

# ------------------------------------------------------------------------- real bugs, fixed with these tests


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_ppo_value_loss_gradient_ignores_an_inf_or_nan_value_on_a_pad(bad):
    """A value of inf or NaN on a pad left the loss finite but made its gradient NaN (0 * inf), which the
    optimiser would have written into the value model; the pads are now selected out like the policy loss's."""
    mask = t([1, 1, 0])
    for clip in (0.2, None):
        values = t([1.0, 0.0, bad]).requires_grad_()
        loss, m = L.ppo_value_loss(values, t([0.5, 0.5, bad]), t([0.6, -1.0, bad]), mask, cliprange_value=clip)
        (g,) = torch.autograd.grad(loss, values)
        # err = [0.16, 1.0]; clipped: v_clipped = [0.7, 0.3], err_c = [0.01, 1.69] -> max = [0.16, 1.69]
        if clip is None:
            assert loss.item() == pytest.approx(0.5 * (0.16 + 1.0) / 2)
            assert g.tolist()[0] == pytest.approx([0.5 * 2 * 0.4 / 2, 0.5 * 2 * 1.0 / 2, 0.0])
        else:
            assert loss.item() == pytest.approx(0.5 * (0.16 + 1.69) / 2) and m["clipfrac"].item() == 0.5
            assert g.tolist()[0] == pytest.approx([0.5 * 2 * 0.4 / 2, 0.0, 0.0])  # token 1: the clipped branch


@pytest.mark.parametrize("name", ["rejected_rewards", "margin", "label_prob"])
def test_bradley_terry_refuses_inputs_that_would_broadcast(name):
    """A (B, 1) margin, soft label or rejected score broadcast against (B,) into a (B, B) loss without a word."""
    args = {"chosen_rewards": t(1.0, 2.0), "rejected_rewards": t(0.0, 0.0), "margin": t(0.5, 0.5),
            "label_prob": t(0.9, 0.9)}
    args[name] = args[name][:, None]
    with pytest.raises(ValueError, match=rf"^bradley_terry_loss: inputs must have the same shape, got .*'{name}': "
                                         r"\(2, 1\)"):
        L.bradley_terry_loss(**args)


@pytest.mark.parametrize("lp_shape, ref_shape, mask_shape", [((2, 3), (2, 4), (2, 3)), ((2, 3), (2, 3), (2, 1)),
                                                             ((3,), (3,), (3,))])
def test_shape_rewards_refuses_inputs_that_are_not_all_b_by_n(lp_shape, ref_shape, mask_shape):
    """Mismatched log-probs were a bare broadcasting RuntimeError, and a (B, 1) mask silently broadcast over N."""
    with pytest.raises(ValueError, match=r"^shape_rewards: logprobs .*, ref_logprobs .* and mask .* must all be "
                                         r"\(B, N\)$"):
        shape_rewards(torch.zeros(lp_shape[0]), torch.zeros(lp_shape), torch.zeros(ref_shape), torch.ones(mask_shape),
                      0.1)
