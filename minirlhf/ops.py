"""Tensor ops that RLHF code gets wrong: masked statistics, log-probs, entropy and KL estimators.

    from minirlhf import ops
    logp = ops.logprobs_from_logits(logits[:, P - 1:-1], response, temperature=0.7)  # (B, N)
    kl = ops.masked_mean(ops.kl_k3(logp, ref_logp), mask)                          # scalar

Conventions (DESIGN §5):
  * every masked reduction goes through `masked_sum` / `masked_mean` (mask is float or bool, 1 = keep);
  * variance is unbiased (Bessel-corrected) over the unmasked elements;
  * log-probs come from `log_softmax` + `gather` (never `log(softmax)`), at the sampling temperature;
  * KL estimators per token with `log_ratio = logp - ref_logp` (Schulman 2020, "Approximating KL
    Divergence"): k1 = log_ratio (unbiased, can be negative), k2 = log_ratio^2 / 2 (low variance,
    biased), k3 = (ratio^-1 - 1) + log_ratio = expm1(-log_ratio) + log_ratio (unbiased, >= 0). All three
    estimate KL(policy || ref) from samples of the policy.

Deliberate simplifications: no fused kernels here (see `fused_linear_logprobs` for the memory-saving
path once it lands); everything works for any leading shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upcast(x):
    """bf16/fp16 -> float32; float32 and float64 stay as they are (so float64 gradchecks stay exact)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def masked_sum(x, mask, dim=None):
    """Sum of x where mask is 1 (over `dim`, or everything)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x, mask, dim=None):
    """Mean of x over the positions where mask is 1 (over `dim`, or everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x, mask, unbiased: bool = True):
    """Variance of x over the unmasked elements; unbiased (divides by n - 1) by default."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_sum((x - mean) ** 2, mask)
    if unbiased:
        if n.item() < 2:
            raise ValueError("masked_var: the unbiased variance needs at least 2 unmasked elements")
        return var / (n - 1)
    return var / n.clamp(min=1)


def masked_whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
    """(x - mean) / std over unmasked elements; with shift_mean=False the mean is added back.

    Masked positions come out as 0 (they must never leak into a loss).
    """
    mask = mask.to(x.dtype)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def logprobs_from_logits(logits, labels, temperature: float = 1.0):
    """log p(label) under softmax(logits / temperature): (..., V), (...) -> (...).

    Computed in float32 at least (bf16 log-softmax loses the small differences PPO ratios depend on).
    """
    logits = upcast(logits)
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)  # (..., V)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (...)


def entropy_from_logits(logits):
    """Entropy of softmax(logits) per position, (..., V) -> (...): logsumexp(z) - sum(p * z)."""
    logits = upcast(logits)
    p = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def kl_k1(logp, ref_logp):
    """k1 = log(p/q) per token: the unbiased estimator, and the per-token penalty in PPO's reward."""
    return logp - ref_logp


def kl_k2(logp, ref_logp):
    """k2 = (log(p/q))^2 / 2: low variance, biased; its gradient is that of KL for small differences."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp, ref_logp):
    """k3 = (q/p - 1) - log(q/p) = expm1(-log_ratio) + log_ratio: unbiased and never negative."""
    log_ratio = logp - ref_logp
    return torch.expm1(-log_ratio) + log_ratio
