"""PPO/GRPO building blocks (minirlhf.rl) and the PPO losses against hand-computed values and references."""

import dataclasses
import math
import re

import pytest
import torch

from minirlhf.losses import ppo_policy_loss, ppo_value_loss
from minirlhf.rl import (AdaptiveKLController, FixedKLController, Rollout, compute_gae, group_advantages,
                         shape_rewards)

D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


# ----------------------------------------------------------------------------------------------- GAE


def test_gae_by_hand_gamma_1():
    # gamma=1, lam=0.95, r = [0, 0, 1], V = [0.5, 0.2, 0.4], V after the last token = 0
    # delta = [0 + 0.2 - 0.5, 0 + 0.4 - 0.2, 1 + 0 - 0.4] = [-0.3, 0.2, 0.6]
    # A_2 = 0.6;  A_1 = 0.2 + 0.95 * 0.6 = 0.77;  A_0 = -0.3 + 0.95 * 0.77 = 0.4315
    adv, ret = compute_gae(t([0.0, 0.0, 1.0]), t([0.5, 0.2, 0.4]), t([1, 1, 1]), gamma=1.0, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.4315, 0.77, 0.6])
    assert ret.tolist()[0] == pytest.approx([0.9315, 0.97, 1.0])


def test_gae_by_hand_gamma_09_with_garbage_in_pads():
    # gamma=0.9, lam=0.95 (gamma*lam = 0.855), r = [0.1, -0.2, 1.0], V = [0.5, 0.2, 0.4]
    # delta_2 = 1.0 - 0.4 = 0.6
    # delta_1 = -0.2 + 0.9 * 0.4 - 0.2 = -0.04
    # delta_0 = 0.1 + 0.9 * 0.2 - 0.5 = -0.22
    # A_2 = 0.6;  A_1 = -0.04 + 0.855 * 0.6 = 0.473;  A_0 = -0.22 + 0.855 * 0.473 = 0.184415
    rewards = t([0.1, -0.2, 1.0, 5.0, -3.0])  # pads hold garbage that must not leak in
    values = t([0.5, 0.2, 0.4, 7.0, 9.0])
    adv, ret = compute_gae(rewards, values, t([1, 1, 1, 0, 0]), gamma=0.9, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.184415, 0.473, 0.6, 0.0, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.684415, 0.673, 1.0, 0.0, 0.0])


def _random_batch(seed=0, b=4, n=7):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(b, n, generator=g, dtype=D)
    values = torch.randn(b, n, generator=g, dtype=D)
    lengths = [n, 1, 3, 5][:b]
    mask = torch.zeros(b, n, dtype=D)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    return rewards, values, mask, lengths


def test_gae_lam0_is_one_step_td_error():
    rewards, values, mask, lengths = _random_batch()
    gamma = 0.9
    adv, _ = compute_gae(rewards, values, mask, gamma=gamma, lam=0.0)
    for i, length in enumerate(lengths):
        for k in range(rewards.shape[1]):
            if k >= length:
                expected = 0.0
            else:
                v_next = values[i, k + 1].item() if k + 1 < length else 0.0
                expected = rewards[i, k].item() + gamma * v_next - values[i, k].item()
            assert adv[i, k].item() == pytest.approx(expected)


def test_gae_lam1_gamma1_returns_are_monte_carlo_return_to_go():
    rewards, values, mask, lengths = _random_batch(seed=1)
    _, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    for i, length in enumerate(lengths):
        for k in range(length):
            assert ret[i, k].item() == pytest.approx(rewards[i, k:length].sum().item())


def test_gae_matches_discounted_sum_of_td_errors():
    # A_t = sum_l (gamma lam)^l delta_{t+l} (Schulman et al. 2016, eq. 16), written as a plain double loop
    rewards, values, mask, lengths = _random_batch(seed=2)
    gamma, lam = 0.95, 0.8
    adv, ret = compute_gae(rewards, values, mask, gamma=gamma, lam=lam)
    for i, length in enumerate(lengths):
        v = values[i, :length].tolist() + [0.0]
        deltas = [rewards[i, k].item() + gamma * v[k + 1] - v[k] for k in range(length)]
        for k in range(length):
            expected = sum((gamma * lam) ** j * deltas[k + j] for j in range(length - k))
            assert adv[i, k].item() == pytest.approx(expected)
            assert ret[i, k].item() == pytest.approx(expected + v[k])
        assert adv[i, length:].abs().sum().item() == 0.0
        assert ret[i, length:].abs().sum().item() == 0.0


def test_gae_padding_invariance():
    rewards, values, mask, lengths = _random_batch(seed=3)
    adv, ret = compute_gae(rewards, values, mask, gamma=0.99, lam=0.95)
    for i, length in enumerate(lengths):
        one = torch.ones(1, length, dtype=D)
        adv_i, ret_i = compute_gae(rewards[i:i + 1, :length], values[i:i + 1, :length], one, 0.99, 0.95)
        assert torch.allclose(adv[i, :length], adv_i[0])
        assert torch.allclose(ret[i, :length], ret_i[0])


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="compute_gae"):
        compute_gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 0.95)


def test_gae_gradcheck():
    rewards, values, mask, _ = _random_batch(seed=4, b=3, n=5)
    rewards.requires_grad_(True)
    values.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r, v: compute_gae(r, v, mask, 0.9, 0.8), (rewards, values))


# ------------------------------------------------------------------------------------- reward shaping


def test_shape_rewards_k1_by_hand():
    logp = t([-1.0, -2.0, -0.5, -3.0])
    ref = t([-1.5, -1.0, -0.5, -9.0])
    mask = t([1, 1, 1, 0])
    r = shape_rewards(torch.tensor([2.0], dtype=D), logp, ref, mask, kl_coef=0.1)
    # k1 = [0.5, -1.0, 0.0, (pad)] -> -0.1 * k1, score 2.0 on the last real token (index 2), pad = 0
    assert r.tolist()[0] == pytest.approx([-0.05, 0.1, 2.0, 0.0])


def test_shape_rewards_k3_by_hand():
    logp = t([-1.0, -2.0, -0.5, -3.0])
    ref = t([-1.5, -1.0, -0.5, -9.0])
    r = shape_rewards(torch.tensor([2.0], dtype=D), logp, ref, t([1, 1, 1, 0]), 0.1, kl_estimator="k3")
    # k3 = exp(-lr) - 1 + lr: lr=0.5 -> e^-0.5 - 0.5; lr=-1 -> e - 2; lr=0 -> 0
    k3 = [math.exp(-0.5) - 0.5, math.e - 2.0]
    assert r.tolist()[0] == pytest.approx([-0.1 * k3[0], -0.1 * k3[1], 2.0, 0.0])
    with pytest.raises(ValueError, match="kl_estimator"):
        shape_rewards(torch.tensor([2.0]), logp, ref, t([1, 1, 1, 0]), 0.1, kl_estimator="k9")


def test_nothing_leaks_from_pads_not_even_an_overflow_or_nan():
    # a pad's log-ratio of -95 nats overflows k3's exp in float32; a NaN there must not spread either
    logp = torch.tensor([[-1.0, -2.0, -0.5, -100.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    for bad in (-100.0, float("nan")):
        lp = logp.clone()
        lp[0, 3] = bad
        for est in ("k1", "k3"):
            r = shape_rewards(torch.tensor([2.0]), lp, ref, mask, 0.1, kl_estimator=est)
            clean = shape_rewards(torch.tensor([2.0]), lp[:, :3], ref[:, :3], mask[:, :3], 0.1, kl_estimator=est)
            assert r[0, 3] == 0 and torch.equal(r[:, :3], clean)
        values = torch.tensor([[0.5, 0.2, 0.4, bad]])
        adv, ret = compute_gae(r, values, mask, gamma=1.0, lam=0.95)
        adv0, ret0 = compute_gae(r[:, :3], values[:, :3], mask[:, :3], gamma=1.0, lam=0.95)
        assert torch.equal(adv[:, :3], adv0) and adv[0, 3] == 0 and ret[0, 3] == 0
        lp.requires_grad_()
        loss, m = ppo_policy_loss(lp, ref, torch.tensor([[1.0, -1.0, 0.5, bad]]), mask, cliprange=0.2)
        (g,) = torch.autograd.grad(loss, lp)
        assert torch.isfinite(loss) and torch.isfinite(m["approx_kl"]) and torch.isfinite(g).all() and g[0, 3] == 0


def test_shape_rewards_score_lands_on_last_real_token():
    mask = t([1, 1, 1, 0, 0],   # right pads
             [1, 1, 1, 1, 1],   # no padding at all
             [1, 0, 0, 0, 0],   # a one-token response
             [0, 1, 1, 1, 0])   # any pattern: the last 1 wins
    logp = torch.randn(4, 5, dtype=D)
    r = shape_rewards(t(1.0, 2.0, 3.0, 4.0), logp, logp.clone(), mask, kl_coef=0.5)  # zero KL
    expected = torch.zeros(4, 5, dtype=D)
    expected[0, 2], expected[1, 4], expected[2, 0], expected[3, 3] = 1.0, 2.0, 3.0, 4.0
    assert torch.equal(r, expected)


def test_shape_rewards_rejects_empty_response():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        shape_rewards(t(1.0, 2.0), torch.zeros(2, 3), torch.zeros(2, 3), t([1, 0, 0], [0, 0, 0]), 0.1)


@pytest.mark.parametrize("scores", [torch.zeros(3), torch.zeros(2, 1), torch.zeros(())])
def test_shape_rewards_rejects_scores_of_the_wrong_shape(scores):
    """One score per row, (B,): a (B, 1) column or a wrong count would broadcast or misalign silently."""
    shape = re.escape(str(tuple(scores.shape)))
    with pytest.raises(ValueError, match=rf"^shape_rewards: scores has shape {shape}, expected \(2,\)$"):
        shape_rewards(scores, torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), 0.1)


# ------------------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=100)
    ctl.update(current_kl=6.6, n_steps=10)  # error = 0.1 -> 0.1 * (1 + 0.1 * 10 / 100)
    assert ctl.value == pytest.approx(0.101)
    ctl = AdaptiveKLController(0.1, 6.0, 100)
    ctl.update(12.0, 10)  # error = 1.0, clipped to +0.2 -> 0.1 * 1.02
    assert ctl.value == pytest.approx(0.102)
    ctl.update(0.0, 10)  # error = -1.0, clipped to -0.2 -> 0.102 * 0.98
    assert ctl.value == pytest.approx(0.09996)
    ctl = AdaptiveKLController(0.1, 6.0, 100)
    ctl.update(torch.tensor(5.4), 10)  # error = -0.1 (a tensor KL works too)
    assert ctl.value == pytest.approx(0.099)


def test_fixed_kl_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05


# --------------------------------------------------------------------------------- group advantages


def test_group_advantages_by_hand():
    r = t(1.0, 2.0, 3.0, 0.0, 0.0, 6.0)
    adv = group_advantages(r, group_size=3)
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1; group 2: mean 2, std sqrt((4 + 4 + 16) / 2)
    s2 = math.sqrt(12.0)
    expected = [-1 / 1.0001, 0.0, 1 / 1.0001, -2 / (s2 + 1e-4), -2 / (s2 + 1e-4), 4 / (s2 + 1e-4)]
    assert adv.tolist() == pytest.approx(expected)
    assert group_advantages(r, 3, scale=False).tolist() == pytest.approx([-1, 0, 1, -2, -2, 4])
    # groups with other means (4 and -1): each is centred on its own mean, not the batch's (1.5)
    assert group_advantages(t(3.0, 4.0, 5.0, -3.0, -3.0, 3.0), 3, scale=False).tolist() == \
        pytest.approx([-1, 0, 1, -2, -2, 4])


def test_group_advantages_equal_rewards_give_zero_not_nan():
    adv = group_advantages(t(0.5, 0.5, 0.5, 0.5), group_size=2)
    assert torch.equal(adv, torch.zeros(4, dtype=D))


def test_group_advantages_rejects_bad_group_size():
    with pytest.raises(ValueError, match="not a multiple"):
        group_advantages(torch.zeros(5), group_size=3)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.zeros(4), group_size=1)


def test_group_advantages_rejects_rewards_that_are_not_one_dimensional():
    with pytest.raises(ValueError, match=r"^group_advantages: rewards must be \(B,\), got shape \(2, 2\)$"):
        group_advantages(torch.zeros(2, 2), group_size=2)
    with pytest.raises(ValueError, match=r"^group_advantages: rewards must be \(B,\), got shape \(\)$"):
        group_advantages(torch.zeros(()), group_size=1, scale=False)


# ------------------------------------------------------------------------------------------- Rollout


def test_rollout_minibatch_indexes_every_tensor():
    b, p, n = 4, 3, 5
    ro = Rollout(query=torch.arange(b * p).view(b, p), query_mask=torch.ones(b, p),
                 response=torch.arange(b * n).view(b, n), response_mask=torch.ones(b, n),
                 logprobs=torch.randn(b, n), ref_logprobs=torch.randn(b, n), values=torch.randn(b, n),
                 scores=torch.arange(b, dtype=torch.float32))
    mb = ro.minibatch(torch.tensor([2, 0]))
    assert mb.scores.tolist() == [2.0, 0.0]
    assert mb.advantages is None and mb.returns is None and mb.rewards is None  # not filled yet: stay None
    ro.rewards, ro.advantages, ro.returns = torch.randn(b, n), torch.randn(b, n), torch.randn(b, n)
    mb = ro.minibatch(torch.tensor([2, 0]))
    for f in dataclasses.fields(Rollout):  # every field, the episodes 2 and 0 in that order
        assert torch.equal(getattr(mb, f.name), getattr(ro, f.name)[[2, 0]]), f.name


# ----------------------------------------------------------------------------------------- PPO losses


def _policy_case():
    # tokens: (A, ratio) = (+1, 1.5) clipped, (-1, 0.5) clipped, (+1, 0.5) not, (-1, 1.5) not,
    # (+2, 1.1) inside the range (not clipped), and a masked token with a huge ratio
    adv = t([1.0, -1.0, 1.0, -1.0, 2.0, 5.0])
    ratio = [1.5, 0.5, 0.5, 1.5, 1.1, 10.0]
    old = t([-1.0, -2.0, -0.3, -0.7, -1.2, -3.0])
    logp = old + torch.tensor([math.log(x) for x in ratio], dtype=D)
    mask = t([1, 1, 1, 1, 1, 0])
    return logp, old, adv, mask


def test_ppo_policy_loss_by_hand():
    logp, old, adv, mask = _policy_case()
    logp.requires_grad_(True)
    loss, m = ppo_policy_loss(logp, old, adv, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2), max(0.5, 0.8), max(-0.5, -0.8), max(1.5, 1.2), -2.2
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 0.5 + 1.5 - 2.2) / 5)
    assert m["clipfrac"].item() == pytest.approx(2 / 5)
    k3 = lambda r: (r - 1) - math.log(r)  # noqa: E731
    assert m["approx_kl"].item() == pytest.approx((2 * k3(1.5) + 2 * k3(0.5) + k3(1.1)) / 5)
    assert m["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 1.1) / 5)
    assert m["ratio_max"].item() == pytest.approx(1.5)  # the masked ratio of 10 is ignored
    # every real ratio below 1: the max is the real tokens' (0.8), not a padded token's ratio
    low = old + torch.log(t([0.5, 0.8, 0.6, 0.7, 0.5, 1.0]))
    assert ppo_policy_loss(low, old, adv, mask, cliprange=0.2)[1]["ratio_max"].item() == pytest.approx(0.8)
    loss.backward()
    # d/dlogp of -A r is -A r on unclipped tokens, 0 where the clipped branch is active or masked
    expected_grad = [0.0, 0.0, -0.5 / 5, 1.5 / 5, -2.2 / 5, 0.0]
    assert logp.grad.tolist()[0] == pytest.approx(expected_grad)


def test_ppo_policy_loss_ratio_one():
    old = torch.randn(2, 4, dtype=D)
    adv = torch.randn(2, 4, dtype=D)
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    loss, m = ppo_policy_loss(old.clone(), old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(-(adv * mask).sum().item() / 5)
    assert m["clipfrac"].item() == 0.0
    assert m["approx_kl"].item() == 0.0
    assert m["ratio_mean"].item() == pytest.approx(1.0)


def test_ppo_policy_loss_gradcheck():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(3, 4, generator=g, dtype=D)
    # log-ratios well inside (|lr| <= 0.1) or well outside (|lr| >= 0.4) the clip range of 0.2
    lr = t([0.05, -0.5, 0.4, -0.1], [0.5, 0.0, -0.4, 0.1], [-0.05, 0.6, -0.6, 0.08])
    adv = t([1.0, -0.5, 2.0, -1.0], [-1.5, 0.7, 1.2, 0.3], [0.4, 1.0, -2.0, -0.8]).requires_grad_(True)
    logp = (old + lr).requires_grad_(True)
    mask = t([1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0])
    assert torch.autograd.gradcheck(lambda lp, a: ppo_policy_loss(lp, old, a, mask, 0.2)[0], (logp, adv))


def test_ppo_value_loss_by_hand():
    values = t([1.0, 1.0, 0.0, 0.55, 3.0])
    old = t([0.5, 0.5, 0.5, 0.5, 0.0])
    returns = t([0.6, 1.2, -1.0, 0.0, -5.0])
    mask = t([1, 1, 1, 1, 0])
    # err   = [0.16, 0.04, 1.00, 0.3025]; v_clipped = [0.7, 0.7, 0.3, 0.55]
    # err_c = [0.01, 0.25, 1.69, 0.3025] -> max = [0.16, 0.25, 1.69, 0.3025], clipped strictly larger: 2 of 4
    loss, m = ppo_value_loss(values, old, returns, mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.16 + 0.25 + 1.69 + 0.3025) / 4)
    assert m["clipfrac"].item() == pytest.approx(0.5)
    for off in (None, float("inf")):  # clipping disabled: plain 0.5 * masked MSE
        loss, m = ppo_value_loss(values, old, returns, mask, cliprange_value=off)
        assert loss.item() == pytest.approx(0.5 * (0.16 + 0.04 + 1.0 + 0.3025) / 4)
        assert m["clipfrac"].item() == 0.0


def test_ppo_losses_refuse_inputs_that_would_broadcast():
    """Every input of the PPO losses is (B, N): a (B, 1) advantage column or (N,) returns would broadcast
    silently, so any other shape is one ValueError naming the argument and the shapes."""
    lp, mask = torch.zeros(2, 3, dtype=D), torch.ones(2, 3)
    for name, adv in (("advantages", torch.zeros(2, 1, dtype=D)), ("advantages", torch.zeros(3, dtype=D))):
        with pytest.raises(ValueError, match=rf"^ppo_policy_loss: inputs must have the same shape, got .*'{name}': "
                                             rf"{re.escape(str(tuple(adv.shape)))}"):
            ppo_policy_loss(lp, lp, adv, mask, cliprange=0.2)
    with pytest.raises(ValueError, match=r"^ppo_policy_loss: .*'old_logprobs': \(2, 2\)"):
        ppo_policy_loss(lp, lp[:, :2], lp, mask, cliprange=0.2)
    with pytest.raises(ValueError, match=r"^ppo_policy_loss: .*'mask': \(1, 3\)"):
        ppo_policy_loss(lp, lp, lp, mask[:1], cliprange=0.2)
    for returns in (torch.zeros(3, dtype=D), torch.zeros(2, 1, dtype=D)):
        shape = re.escape(str(tuple(returns.shape)))
        with pytest.raises(ValueError, match=rf"^ppo_value_loss: inputs must have the same shape, got .*'values': "
                                             rf"\(2, 3\).*'returns': {shape}"):
            ppo_value_loss(lp, lp, returns, mask, cliprange_value=0.2)
    with pytest.raises(ValueError, match=r"^ppo_value_loss: .*'old_values': \(2, 1\)"):
        ppo_value_loss(lp, lp[:, :1], lp, mask, cliprange_value=None)


def test_ppo_value_loss_gradcheck():
    # |V - V_old| either < 0.15 or > 0.3 (clip 0.2), and the two squared errors never tie
    old = t([0.5, -0.2, 1.0, 0.0], [0.3, 0.1, -0.7, 2.0])
    values = (old + t([0.1, -0.5, 0.35, -0.05], [0.6, 0.12, -0.4, 0.0])).requires_grad_(True)
    returns = t([1.5, 0.3, 0.2, -1.0], [-0.2, 0.9, 0.5, 1.0])
    mask = t([1, 1, 1, 1], [1, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda v: ppo_value_loss(v, old, returns, mask, 0.2)[0], (values,))
    assert torch.autograd.gradcheck(lambda v: ppo_value_loss(v, old, returns, mask, None)[0], (values,))


def test_group_advantages_are_exactly_zero_for_a_group_of_equal_rewards():
    """Seven 0.1s: their float mean is not exactly 0.1, but a tied group must carry no signal at all."""
    rewards = torch.tensor([0.1] * 7 + [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    for scale in (True, False):
        adv = group_advantages(rewards, 7, scale=scale)
        assert torch.equal(adv[:7], torch.zeros(7))
        assert adv[7:].abs().min() > 0.1
