"""PPO and GRPO building blocks as pure functions: reward shaping, GAE, KL controllers, group advantages.

How to use (one PPO step, CleanRL order; the loop itself lives in the PPO stage):

    from minirlhf import rl
    kl_ctl = rl.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    rewards = rl.shape_rewards(scores, logprobs, ref_logprobs, mask, kl_ctl.value)   # (B, N)
    advantages, returns = rl.compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)  # (B, N), (B, N)
    ...  # epochs x minibatches of losses.ppo_policy_loss / losses.ppo_value_loss
    kl_ctl.update(current_kl=ops.masked_sum(ops.kl_k1(logprobs, ref_logprobs), mask) / B, n_steps=B)

    # GRPO: no value model; each prompt is sampled `group_size` times in a row
    adv = rl.group_advantages(scores, group_size=8)                                    # (B,)

What each piece is:
  * `shape_rewards`: the RLHF reward of Ziegler et al. 2019 (eq. 2) and Ouyang et al. 2022 (eq. 2), spread
    over tokens: every response token pays `-kl_coef * k1` (log pi(y_t) - log pi_ref(y_t)), and the
    reward-model score is added once, at the last real response token (the `<|end|>`).
  * `compute_gae`: Generalized Advantage Estimation (Schulman et al. 2016, eq. 16),
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}          (A after the last real token = 0)
    i.e. A_t = sum_l (gamma lam)^l delta_{t+l}; the value after the last real token is 0 (the episode
    ends at `<|end|>` or at the length limit), and the value-function target is A_t + V_t.
  * `AdaptiveKLController`: Ziegler et al. 2019, §2.2: the KL coefficient follows a proportional
    controller so that the measured KL(policy || ref) tracks `target`.
  * `group_advantages`: GRPO's outcome supervision (Shao et al. 2024, §4.1.2): the advantage of each
    sample is its score normalised within the group of samples of the same prompt.
  * `Rollout`: the record of tensors one PPO batch carries.

Deliberate simplifications: one episode = one response; the prompt is the state before the first action
and no reward or value is assigned to prompt tokens. Masks are response masks of the form ones-then-zeros
(right padding after the EOS); GAE stops bootstrapping at the first masked position. No whitening here:
callers whiten advantages with `ops.masked_whiten` if they want to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from minirlhf.model import last_token_index
from minirlhf.ops import kl_k1, kl_k3, select, upcast


def shape_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float, kl_estimator: str = "k1"):
    """Per-token PPO rewards: -kl_coef * KL estimate on every real token, plus the score at the last one.

    Ziegler et al. 2019, eq. (2) / Ouyang et al. 2022, eq. (2): R(x, y) = r(x, y) - beta * log(pi/pi_ref),
    with the log-ratio paid per token and the reward-model score r(x, y) arriving at the end of the
    episode (the last real token of the row, i.e. the last 1 in `mask`, never a pad).

    scores: (B,); logprobs, ref_logprobs, mask: (B, N) (a ValueError otherwise). `kl_estimator` is "k1"
    (log-ratio, the standard choice) or "k3" (non-negative per token, see `ops.kl_k3`). Masked positions
    are 0. Nothing is detached: pass detached rollout tensors (they carry no graph in a normal PPO step).
    """
    if not (logprobs.shape == ref_logprobs.shape == mask.shape) or mask.dim() != 2:
        raise ValueError(f"shape_rewards: logprobs {tuple(logprobs.shape)}, ref_logprobs {tuple(ref_logprobs.shape)} "
                         f"and mask {tuple(mask.shape)} must all be (B, N)")
    logprobs, ref_logprobs = select(upcast(logprobs), mask), select(upcast(ref_logprobs), mask)  # (B, N), pads 0
    if kl_estimator == "k1":
        kl = kl_k1(logprobs, ref_logprobs)  # (B, N)
    elif kl_estimator == "k3":
        kl = kl_k3(logprobs, ref_logprobs)  # (B, N), k3's exp cannot overflow on a pad
    else:
        raise ValueError(f"shape_rewards: kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"shape_rewards: scores has shape {tuple(scores.shape)}, expected ({mask.shape[0]},)")
    mask_f = mask.to(kl.dtype)
    last = last_token_index(mask, "shape_rewards")  # (B,) ValueError for an empty response
    at_last = torch.nn.functional.one_hot(last, mask.shape[1]).to(kl.dtype)  # (B, N)
    return -kl_coef * kl * mask_f + upcast(scores).to(kl.dtype)[:, None] * at_last  # (B, N)


def compute_gae(rewards, values, mask, gamma: float, lam: float):
    """Generalized Advantage Estimation (Schulman et al. 2016, eq. 16) over the response tokens.

        delta_t = r_t + gamma * m_{t+1} * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}

    with m the mask, so that the value (and advantage) after the last real token is 0. rewards, values,
    mask: (B, N), mask of the form ones-then-zeros per row. Returns `(advantages, returns)`, both (B, N):
    returns = advantages + values on real tokens (the value-function target); both are 0 outside the
    mask, and whatever rewards or values hold on padded positions cannot leak in. Loops over time only,
    vectorised over the batch. Differentiable w.r.t. rewards and values (callers detach as needed).
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(f"compute_gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must all be (B, N)")
    rewards, values = upcast(rewards), upcast(values)
    mask = mask.to(values.dtype)
    rewards, values = select(rewards, mask), select(values, mask)  # (B, N) pads hold 0 from here on
    n = rewards.shape[1]
    next_value = torch.zeros_like(values[:, 0])  # (B,) V after the last position
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    next_mask = torch.zeros_like(mask[:, 0])  # (B,) position N does not exist
    advantages = []
    for t in reversed(range(n)):
        delta = rewards[:, t] + gamma * next_mask * next_value - values[:, t]  # (B,)
        next_adv = (delta + gamma * lam * next_mask * next_adv) * mask[:, t]  # (B,)
        advantages.append(next_adv)
        next_value, next_mask = values[:, t], mask[:, t]
    advantages = torch.stack(advantages[::-1], dim=1)  # (B, N)
    returns = (advantages + values) * mask  # (B, N)
    return advantages, returns


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, §2.2): a proportional controller on log beta.

        error = clip(current_kl / target - 1, -0.2, 0.2)
        beta <- beta * (1 + error * n_steps / horizon)

    `current_kl` is the measured KL(policy || ref) per sequence (summed over tokens), `n_steps` the number
    of episodes since the last update (the batch size).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController: target ({target}) and horizon ({horizon}) must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """value <- value * (1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon), in place."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class FixedKLController:
    """A constant KL coefficient with the same interface as `AdaptiveKLController` (update is a no-op)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing: the coefficient stays at `kl_coef`."""
        pass


def group_advantages(rewards, group_size: int, scale: bool = True, eps: float = 1e-4):
    """GRPO outcome advantages (Shao et al. 2024, §4.1.2): A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    rewards: (B,) laid out as consecutive groups of `group_size` samples of the same prompt. The std is
    the unbiased one (divides by group_size - 1). scale=False gives mean-only centring (Dr. GRPO,
    Liu et al. 2025), which does not up-weight groups whose rewards barely differ. A group whose rewards
    are all equal gets exactly 0. Returns (B,).
    """
    if rewards.dim() != 1:
        raise ValueError(f"group_advantages: rewards must be (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"group_advantages: batch size {rewards.shape[0]} is not a multiple of "
                         f"group_size={group_size}")
    if scale and group_size < 2:
        raise ValueError("group_advantages: scale=True needs group_size >= 2 (the unbiased std of one sample "
                         "is undefined)")
    r = upcast(rewards).view(-1, group_size)  # (G, group_size)
    adv = r - r.mean(dim=1, keepdim=True)  # (G, group_size)
    if scale:
        adv = adv / (r.std(dim=1, unbiased=True, keepdim=True) + eps)
    # a group of equal rewards carries no signal: exactly 0 (the float mean of equal numbers can miss them
    # by an ulp, which the std division would blow up)
    tied = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)  # (G, 1)
    return adv.masked_fill(tied, 0.0).view(-1)  # (B,)


@dataclass
class Rollout:
    """The tensors one PPO batch carries (B episodes, P prompt tokens, N response tokens).

    Filled in algorithm order (the PPO stage makes one per iteration): generation gives the ids and masks,
    scoring the log-probs, values and scores, `shape_rewards` the rewards, `compute_gae` the advantages and
    returns; each optimiser step then takes a `minibatch` of episodes. Prompts are left-padded (so every
    response starts at column P); responses are right-padded after `<|end|>`.
    """

    query: torch.Tensor  # (B, P) prompt token ids, left-padded
    query_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response: torch.Tensor  # (B, N) sampled response token ids, right-padded after <|end|>
    response_mask: torch.Tensor  # (B, N) 1.0 on real response tokens (including <|end|>), 0.0 on pads
    logprobs: torch.Tensor  # (B, N) log pi_old(y_t) at sampling time (the PPO ratio's denominator)
    ref_logprobs: torch.Tensor  # (B, N) log pi_ref(y_t) under the frozen reference (SFT) policy
    values: torch.Tensor  # (B, N) V_old(s_t) from the value head at sampling time
    scores: torch.Tensor  # (B,) reward-model score per episode (after any missing-EOS penalty)
    rewards: torch.Tensor | None = None  # (B, N) shaped per-token rewards (shape_rewards)
    advantages: torch.Tensor | None = None  # (B, N) GAE advantages (compute_gae), maybe whitened
    returns: torch.Tensor | None = None  # (B, N) value targets = advantages + values (compute_gae)

    @property
    def tokens(self) -> torch.Tensor:
        """Prompt and response side by side, (B, P + N): what the policy and value model read."""
        return torch.cat([self.query, self.response], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + N) 1 on every real token of prompt and response, in the prompt mask's dtype."""
        return torch.cat([self.query_mask, self.response_mask.to(self.query_mask.dtype)], dim=1)

    def minibatch(self, idx) -> "Rollout":
        """The same record restricted to the episodes `idx` (a (b,) index tensor, list or slice)."""
        return Rollout(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[idx]
                          for f in dataclasses.fields(self)})
