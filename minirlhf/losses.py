"""Losses as pure functions of tensors: each returns `(loss, metrics)`.

`loss` is a scalar mean over the batch; `metrics` is a dict of detached tensors (per-example where the
name says so). Each docstring names the paper and equation it implements, so a reader can check the
code against the source line by line.

Deliberate simplifications: no reduction options. Each loss has one fixed unit of averaging, named in
its docstring: supervised tokens for `sft_loss`, real response tokens for the PPO losses (a long
response weighs more), each sequence's tokens and then sequences for `grpo_loss`, pairs or examples for
the reward-model and preference losses; `length_disentangle_loss` is a correlation over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minirlhf.ops import masked_mean, pearson_correlation, select, upcast


def sft_loss(logits, labels, loss_mask):
    """Supervised fine-tuning: next-token cross-entropy on the masked (assistant) tokens only.

    logits: (B, T, V) where position t predicts labels[:, t]; labels: (B, T); loss_mask: (B, T), 1 on the
    assistant's tokens and its closing <|end|>. The mean is over supervised tokens of the whole batch
    (each token counts once), as in InstructGPT's SFT (Ouyang et al. 2022, §3.5).
    """
    nll = F.cross_entropy(upcast(logits).flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)  # (B, T)
    loss = masked_mean(nll, loss_mask)
    return loss, {"tokens": loss_mask.sum().detach()}


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None, center_coef: float = 0.0, label_prob=None):
    """Reward-model loss: -log sigmoid(r_chosen - r_rejected - margin), mean over pairs.

    Bradley & Terry (1952); as the reward-model loss in Ouyang et al. 2022, eq. (1), and Stiennon et al.
    2020, eq. (1). `margin` (B,) is Llama 2's margin term (Touvron et al. 2023, eq. (2)): a pair labelled
    with more confidence must be separated by more. `center_coef` adds `center_coef * mean((r_c + r_r)^2)`
    (Eisenstein et al. 2023) so that rewards stay near 0 -- the loss alone is shift invariant.

    `label_prob` (B,) turns the hard label into a soft one: the probability q that "chosen" is preferred
    (for example the share of several annotators who chose it), and the loss becomes the cross-entropy

        -[q log sigmoid(d) + (1 - q) log sigmoid(-d)],   d = r_chosen - r_rejected - margin,

    the Bradley-Terry likelihood of q votes for chosen and 1 - q against. q = 1 is the plain loss; q = 1 - eps
    is the label smoothing of conservative DPO (Mitchell 2023), applied to a reward model.

    All given tensors are (B,) (a ValueError otherwise: nothing is broadcast).
    Metrics: `accuracy` (chosen strictly above rejected; ties count as wrong), `margins` per pair.
    """
    _check_same_shape("bradley_terry_loss", chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                      **{k: v for k, v in (("margin", margin), ("label_prob", label_prob)) if v is not None})
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin
    if label_prob is None:
        loss = -F.logsigmoid(diff).mean()
    else:
        loss = -(label_prob * F.logsigmoid(diff) + (1 - label_prob) * F.logsigmoid(-diff)).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    margins = (chosen_rewards - rejected_rewards).detach()
    return loss, {"accuracy": (margins > 0).float().mean(), "margins": margins,
                  "chosen_rewards": chosen_rewards.detach(), "rejected_rewards": rejected_rewards.detach()}


def length_disentangle_loss(quality, length_scores, lengths, w_quality, w_length):
    """ODIN's extra reward-model loss: a length head absorbs length, the quality head is kept free of it.

    Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF", §4. Two linear heads read the
    same final hidden state; the Bradley-Terry loss is applied to their sum, and this loss adds

        |corr(quality, lengths)| - corr(length_scores, lengths) + |w_quality . w_length|

    with Pearson's correlation over the batch's responses (chosen and rejected together): the quality
    head is pushed to be uncorrelated with length, the length head to follow it, and the two heads'
    weight vectors to be orthogonal. After training the length head is dropped, so RL optimises a reward
    that no longer pays for length (the annotators' bias), while the pair of heads could still fit labels
    that do.

    quality, length_scores, lengths: (N,) scores of the two heads and response lengths (tokens);
    w_quality, w_length: the heads' weights (any shape, flattened). Metrics: both correlations and the
    heads' overlap |w_quality . w_length|.
    """
    corr_q, corr_l = pearson_correlation(quality, lengths), pearson_correlation(length_scores, lengths)
    orth = (w_quality.flatten() @ w_length.flatten()).abs()
    loss = corr_q.abs() - corr_l + orth
    return loss, {"corr_quality_length": corr_q.detach(), "corr_length_head": corr_l.detach(),
                  "head_overlap": orth.detach()}


def _check_same_shape(where: str, **tensors) -> None:
    """Raise one clear error if the named tensors do not all have the same shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{where}: inputs must have the same shape, got {shapes}")


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised, per token.

        ratio = exp(logp - logp_old);  loss = masked mean of max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps))

    logprobs (with grad), old_logprobs, advantages, mask: (B, N), all the same shape (a ValueError otherwise:
    nothing is broadcast); advantages are per token (GAE). The mean is over all real tokens of the batch.

    Metrics: `clipfrac` (fraction of real tokens where the clipped branch is active, i.e. its gradient is 0),
    `approx_kl` (masked mean of k3 = (ratio - 1) - log ratio = `ops.kl_k3(old_logprobs, logprobs)`: an
    estimate of KL(pi_old || pi_theta) from the rollout's samples of pi_old; >= 0 per token),
    `ratio_mean`, `ratio_max` (over real tokens).
    """
    from minirlhf.ops import kl_k3

    _check_same_shape("ppo_policy_loss", logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
                      mask=mask)
    logprobs, old_logprobs, advantages = upcast(logprobs), upcast(old_logprobs), upcast(advantages)
    mask = mask.to(logprobs.dtype)
    # padded positions hold 0 from here on: no exp can overflow there and nothing leaks out of them
    logprobs, old_logprobs, advantages = select(logprobs, mask), select(old_logprobs, mask), select(advantages, mask)
    log_ratio = logprobs - old_logprobs  # (B, N)
    ratio = torch.exp(log_ratio)  # (B, N)
    unclipped = -advantages * ratio  # (B, N)
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # (B, N)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        real = mask.bool()
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).to(mask.dtype), mask),
            "approx_kl": masked_mean(kl_k3(old_logprobs, logprobs), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": ratio[real].max() if real.any() else ratio.new_zeros(()),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def ppo_value_loss(values, old_values, returns, mask, cliprange_value):
    """PPO clipped value loss: not in the paper (Schulman et al. 2017 eq. 9 has the plain squared error), but
    in its reference code, OpenAI baselines ppo2; Engstrom et al. 2020 study what it changes.

        v_clipped = V_old + clamp(V - V_old, -c, c)
        loss = 0.5 * masked mean of max((V - R)^2, (v_clipped - R)^2)

    values (with grad), old_values (from the rollout), returns (GAE targets), mask: (B, N), all the same shape
    (a ValueError otherwise: nothing is broadcast); whatever padded positions hold, even inf or NaN, stays out.
    `cliprange_value=None` or `float("inf")` disables clipping (plain 0.5 * masked MSE).

    Metrics: `clipfrac` (fraction of real tokens where the clipped error is strictly larger, so the
    gradient is 0 there).
    """
    _check_same_shape("ppo_value_loss", values=values, old_values=old_values, returns=returns, mask=mask)
    values, old_values, returns = upcast(values), upcast(old_values), upcast(returns)
    mask = mask.to(values.dtype)
    values, old_values, returns = select(values, mask), select(old_values, mask), select(returns, mask)  # pads: 0
    err = (values - returns) ** 2  # (B, N)
    if cliprange_value is None or cliprange_value == float("inf"):
        loss = 0.5 * masked_mean(err, mask)
        clipfrac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)  # (B, N)
        err_clipped = (v_clipped - returns) ** 2  # (B, N)
        loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
        clipfrac = masked_mean((err_clipped > err).to(mask.dtype), mask)
    return loss, {"clipfrac": clipfrac.detach()}


# ---------------------------------------------------------------------------------------------------
# Preference optimisation (DPO, IPO, KTO, ORPO, SimPO) and GRPO.
#
# Sequence log-probs are SUMMED over response tokens for DPO, IPO and KTO and AVERAGED per token for
# ORPO and SimPO; the callers compute them (`dpo.sequence_logps`), these functions only see (B,) tensors.
# Sign convention everywhere: log_ratio = logp_policy - logp_ref (as in `ops.kl_k1`).
# ---------------------------------------------------------------------------------------------------


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float,
             label_smoothing: float = 0.0):
    """Direct Preference Optimization: -log sigmoid(beta * h), mean over pairs.

    Rafailov et al. 2023, eq. (7), with h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) -
    log pi_ref(y_l|x)) on SUMMED response log-probs, all (B,). `label_smoothing` = eps is conservative
    DPO (cDPO, Mitchell 2023, "A note on DPO with noisy preferences"): each label is assumed flipped with
    probability eps, so the loss is -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h).
    With policy == reference, h = 0 and the loss is log 2 for every eps.

    Metrics (per pair): `chosen_rewards` = beta * (pc - rc) and `rejected_rewards` = beta * (pr - rr) --
    the implicit rewards of eq. (5) up to the prompt-only term -- `margins` (their difference) and
    `accuracies` (1.0 where the chosen reward is strictly higher; ties count as wrong).
    """
    _check_same_shape("dpo_loss", policy_chosen_logps=policy_chosen_logps,
                      policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                      ref_rejected_logps=ref_rejected_logps)
    chosen_logratios = upcast(policy_chosen_logps) - upcast(ref_chosen_logps)  # (B,)
    rejected_logratios = upcast(policy_rejected_logps) - upcast(ref_rejected_logps)  # (B,)
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach()
    margins = chosen_rewards - rejected_rewards
    return losses.mean(), {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
                           "margins": margins, "accuracies": (margins > 0).to(margins.dtype)}


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau: float):
    """Identity Preference Optimisation: mean of (h - 1/(2 tau))^2 over pairs.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    eq. (17), with h the DPO log-ratio difference on SUMMED response log-probs (the paper's
    log pi(y)/pi_ref(y) is a whole-sequence quantity). Some libraries average log-probs per token for
    IPO instead (TRL does), which rescales h by 1/length and so changes what a given tau means.
    The loss is a regression of h onto 1/(2 tau), so unlike DPO it does not push h to infinity.

    Metrics (per pair): `chosen_rewards` = tau * (pc - rc), `rejected_rewards` = tau * (pr - rr) (tau
    plays beta's role as the KL coefficient), `margins` = h, `accuracies` (h > 0).
    """
    _check_same_shape("ipo_loss", policy_chosen_logps=policy_chosen_logps,
                      policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                      ref_rejected_logps=ref_rejected_logps)
    if tau <= 0:
        raise ValueError(f"ipo_loss: tau must be > 0, got {tau}")
    chosen_logratios = upcast(policy_chosen_logps) - upcast(ref_chosen_logps)  # (B,)
    rejected_logratios = upcast(policy_rejected_logps) - upcast(ref_rejected_logps)  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    loss = ((h - 1.0 / (2.0 * tau)) ** 2).mean()
    margins = h.detach()
    return loss, {"chosen_rewards": (tau * chosen_logratios).detach(),
                  "rejected_rewards": (tau * rejected_logratios).detach(),
                  "margins": margins, "accuracies": (margins > 0).to(margins.dtype)}


def kto_loss(policy_chosen_logps, policy_rejected_logps, policy_kl_logps, ref_chosen_logps, ref_rejected_logps,
             ref_kl_logps, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """Kahneman-Tversky Optimization: a prospect-theory value of the implicit reward, no pairs needed.

    Ethayarajh et al. 2024, eq. (8). With r = log pi(y|x) - log pi_ref(y|x) on SUMMED log-probs:
      desirable   y: lambda_D * (1 - sigmoid(beta * (r - z0)))
      undesirable y: lambda_U * (1 - sigmoid(beta * (z0 - r)))
    (the paper's lambda_y - v(x, y); 1 - sigmoid(u) is computed as sigmoid(-u), exact and stable). The
    reference point z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x))) is the paper's biased KL estimate
    from MISMATCHED pairs (prompt x with the completion y' of another example: `policy_kl_logps`,
    `ref_kl_logps`, any length >= 1); it is detached -- the paper does not backpropagate through z0.

    Chosen (desirable) and rejected (undesirable) examples need not be paired or equally many; either
    side may be empty (B=0). The loss is the mean over all of them together (the per-example losses are
    concatenated), so a side's weight in the batch is proportional to its count times its lambda.

    Metrics: `kl` (z0, scalar), `chosen_rewards` = beta * r_chosen and `rejected_rewards` = beta *
    r_rejected (per example; empty for an empty side).
    """
    _check_same_shape("kto_loss (chosen)", policy_chosen_logps=policy_chosen_logps,
                      ref_chosen_logps=ref_chosen_logps)
    _check_same_shape("kto_loss (rejected)", policy_rejected_logps=policy_rejected_logps,
                      ref_rejected_logps=ref_rejected_logps)
    _check_same_shape("kto_loss (kl)", policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    if policy_kl_logps.numel() == 0:
        raise ValueError("kto_loss: policy_kl_logps is empty; z0 needs at least one mismatched pair")
    if policy_chosen_logps.numel() + policy_rejected_logps.numel() == 0:
        raise ValueError("kto_loss: no chosen and no rejected examples in the batch")
    z0 = (upcast(policy_kl_logps) - upcast(ref_kl_logps)).mean().detach().clamp(min=0)  # scalar
    chosen_logratios = upcast(policy_chosen_logps) - upcast(ref_chosen_logps)  # (Bc,)
    rejected_logratios = upcast(policy_rejected_logps) - upcast(ref_rejected_logps)  # (Br,)
    chosen_losses = desirable_weight * torch.sigmoid(-beta * (chosen_logratios - z0))  # (Bc,)
    rejected_losses = undesirable_weight * torch.sigmoid(-beta * (z0 - rejected_logratios))  # (Br,)
    loss = torch.cat([chosen_losses, rejected_losses]).mean()
    return loss, {"kl": z0, "chosen_rewards": (beta * chosen_logratios).detach(),
                  "rejected_rewards": (beta * rejected_logratios).detach()}


def log1mexp(x):
    """log(1 - exp(x)) for x <= 0, accurate everywhere (Maechler 2012, "Accurately computing log(1 - exp(-|a|))").

    For x > -ln 2 use log(-expm1(x)) (1 - exp(x) is tiny there and expm1 keeps its digits); otherwise
    log1p(-exp(x)) (exp(x) is small and log1p keeps its digits). log1mexp(0) = -inf. Each branch is fed
    a harmless value where it is not selected, so torch.where never routes a nan gradient.
    (A generic op; it could move to minirlhf.ops.)
    """
    import math

    near_zero = x > -math.log(2.0)
    x_near = torch.where(near_zero, x, torch.full_like(x, -1.0))  # safe for log(-expm1(.))
    x_far = torch.where(near_zero, torch.full_like(x, -1.0), x)  # safe for log1p(-exp(.))
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def orpo_loss(chosen_mean_logps, rejected_mean_logps, chosen_nll, lam: float):
    """Odds Ratio Preference Optimization: SFT loss plus lam * -log sigmoid(log odds ratio).

    Hong et al. 2024, eqs. (6)-(7): odds(y|x) = P(y|x) / (1 - P(y|x)) with P(y|x) = exp(mean per-token
    log-prob) (eq. 4, so the inputs are MEAN log-probs, (B,), <= 0); log odds = logp - log1mexp(logp),
    log_odds = log odds(chosen) - log odds(rejected); loss = mean(chosen_nll) + lam * mean(-logsigmoid(
    log_odds)). `chosen_nll` is the SFT loss on the chosen responses, a scalar or per example (B,); it is
    averaged either way. Log-probs are clamped to at most -eps of their dtype: a mean log-prob of
    exactly 0 would mean infinite odds, and log_softmax cannot resolve log-probs closer to 0 than that.

    Metrics: `log_odds` (per pair), `or_loss` and `nll` (the two terms, scalars), `accuracies` (log_odds > 0).
    """
    _check_same_shape("orpo_loss", chosen_mean_logps=chosen_mean_logps, rejected_mean_logps=rejected_mean_logps)
    chosen, rejected = upcast(chosen_mean_logps), upcast(rejected_mean_logps)
    eps = torch.finfo(chosen.dtype).eps
    chosen, rejected = chosen.clamp(max=-eps), rejected.clamp(max=-eps)
    log_odds = (chosen - log1mexp(chosen)) - (rejected - log1mexp(rejected))  # (B,)
    or_loss = -F.logsigmoid(log_odds).mean()
    nll = upcast(chosen_nll).mean()
    loss = nll + lam * or_loss
    log_odds = log_odds.detach()
    return loss, {"log_odds": log_odds, "or_loss": or_loss.detach(), "nll": nll.detach(),
                  "accuracies": (log_odds > 0).to(log_odds.dtype)}


def simpo_loss(chosen_mean_logps, rejected_mean_logps, beta: float, gamma: float):
    """Simple Preference Optimization: reference-free, length-normalised DPO with a target margin.

    Meng et al. 2024, eq. (6): mean(-logsigmoid(beta * (c - r) - gamma)) where c and r are the MEAN
    per-token log-probs (B,) of the chosen and rejected responses and gamma the target reward margin.

    Metrics (per pair): `chosen_rewards` = beta * c, `rejected_rewards` = beta * r, `margins`,
    `accuracies` (chosen reward strictly higher).
    """
    _check_same_shape("simpo_loss", chosen_mean_logps=chosen_mean_logps, rejected_mean_logps=rejected_mean_logps)
    chosen_rewards = beta * upcast(chosen_mean_logps)  # (B,)
    rejected_rewards = beta * upcast(rejected_mean_logps)  # (B,)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma).mean()
    margins = (chosen_rewards - rejected_rewards).detach()
    return loss, {"chosen_rewards": chosen_rewards.detach(), "rejected_rewards": rejected_rewards.detach(),
                  "margins": margins, "accuracies": (margins > 0).to(margins.dtype)}


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, epsilon: float = 0.2, beta: float = 0.04):
    """Group Relative Policy Optimization: PPO's clipped surrogate with a per-sequence advantage + k3 KL.

    Shao et al. 2024 (DeepSeekMath), eq. (3), as a loss (the objective negated). Per token t of sequence i:
        -min(ratio * A_i, clip(ratio, 1 - epsilon, 1 + epsilon) * A_i) + beta * k3
    with ratio = exp(logprobs - old_logprobs) and k3 = pi_ref/pi - log(pi_ref/pi) - 1 (eq. 4), i.e.
    `ops.kl_k3(logprobs, ref_logprobs)` (log_ratio = logp_policy - logp_ref). The per-token
    loss is averaged over each sequence's real tokens (the 1/|o_i| of eq. 3), then over the batch, so a
    short answer weighs as much as a long one. logprobs, old_logprobs, ref_logprobs, mask: (B, T);
    advantages: (B,) (see `rl.group_advantages`). beta=0 drops the KL term from the loss (the `kl`
    metric is still reported).

    Metrics: `kl` (mean k3 over all real tokens), `clipfrac` (fraction of real tokens where the clipped
    term is the smaller one, i.e. where clipping zeroes the gradient).
    """
    from minirlhf.ops import kl_k3

    _check_same_shape("grpo_loss", logprobs=logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                      mask=mask)
    if logprobs.dim() != 2 or tuple(advantages.shape) != tuple(logprobs.shape[:1]):
        raise ValueError(f"grpo_loss: expected logprobs (B, T) and advantages (B,), got "
                         f"{tuple(logprobs.shape)} and {tuple(advantages.shape)}")
    logprobs, old_logprobs, ref_logprobs = upcast(logprobs), upcast(old_logprobs), upcast(ref_logprobs)
    # padded positions hold 0 from here on: no exp can overflow there and nothing leaks out of them
    logprobs, old_logprobs, ref_logprobs = (select(x, mask) for x in (logprobs, old_logprobs, ref_logprobs))
    adv = upcast(advantages).unsqueeze(-1)  # (B, 1), broadcast over tokens
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = ratio * adv  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv  # (B, T)
    per_token = -torch.min(unclipped, clipped)  # (B, T)
    k3 = kl_k3(logprobs, ref_logprobs)  # (B, T)
    if beta != 0.0:
        per_token = per_token + beta * k3
    loss = masked_mean(per_token, mask, dim=1).mean()
    return loss, {"kl": masked_mean(k3, mask).detach(),
                  "clipfrac": masked_mean((clipped < unclipped).to(per_token.dtype), mask).detach()}
