"""Tensor ops that RLHF code gets wrong: masked statistics, log-probs, entropy and KL estimators.

    from minirlhf import ops
    logp = ops.logprobs_from_logits(logits[:, P - 1:-1], response, temperature=0.7)  # (B, N)
    kl = ops.masked_mean(ops.kl_k3(logp, ref_logp), mask)                          # scalar

Conventions (where RLHF code usually goes wrong):
  * every masked reduction goes through `masked_sum` / `masked_mean` (mask is float or bool; it selects, never
    weights: any non-zero entry keeps its element, 0 drops it);
  * variance is unbiased (Bessel-corrected) over the unmasked elements;
  * log-probs come from `log_softmax` + `gather` (never `log(softmax)`), at the sampling temperature;
  * KL estimators per token with `log_ratio = logp - ref_logp` (Schulman 2020, "Approximating KL
    Divergence"): k1 = log_ratio (unbiased, can be negative), k2 = log_ratio^2 / 2 (low variance,
    biased), k3 = (ratio^-1 - 1) + log_ratio = expm1(-log_ratio) + log_ratio (unbiased, >= 0). All three
    estimate KL(policy || ref) from samples of the policy.

The memory-saving path: `fused_linear_logprobs(hidden, weight, labels)` gives the same
numbers as `logprobs_from_logits(hidden @ weight.T, labels)` while holding the logits of only
`chunk_size` rows at a time, forward and backward (the backward recomputes each chunk's logits).
`linear_logprobs` picks between the two by vocabulary size (`FUSED_VOCAB_THRESHOLD`): the call a
training stage makes when it has final hidden states and the LM-head weight.

Deliberate simplifications: the fused op is plain PyTorch (a Python loop over row chunks, no custom
kernel), has no ignore-index (every label must be a valid id; callers mask afterwards, as with
`logprobs_from_logits`), and everything else works for any leading shape.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def upcast(x):
    """bf16/fp16 -> float32; float32 and float64 stay as they are (so float64 gradchecks stay exact)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def select(x, mask):
    """x where mask is 1, else 0. Selected, not multiplied: an inf or NaN under the mask stays out
    (inf * 0 is NaN), and its gradient there is exactly 0."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x, mask, dim=None):
    """Sum of x where mask is 1 (over `dim`, or everything); masked values never leak in (see `select`)."""
    x = select(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x, mask, dim=None):
    """Mean of x over the positions where mask is non-zero (over `dim`, or everything): a selection, not a
    weighting (a mask of 0.5s keeps its elements as 1s would)."""
    keep = mask.bool().to(x.dtype)
    count = keep.sum() if dim is None else keep.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x, mask, unbiased: bool = True):
    """Variance of x over the unmasked (non-zero mask) elements; unbiased (divides by n - 1) by default."""
    mask = mask.bool().to(x.dtype)
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
    return select(whitened, mask)


def pearson_correlation(x, y, eps: float = 1e-8):
    """Pearson's correlation of two (N,) float tensors: cov(x, y) / (std(x) std(y)), differentiable.

    0 when either input is constant (the denominator is clamped at `eps`). Computed in float32 or wider.
    """
    x, y = upcast(x), upcast(y)
    xc, yc = x - x.mean(), y - y.mean()  # (N,)
    return (xc * yc).sum() / (xc.norm() * yc.norm()).clamp_min(eps)


def _triton_kernel_for(logits):
    """`minirlhf.triton_logprobs` when its kernel should serve these logits (MINIRLHF_TRITON=1, CUDA,
    float32/bf16/fp16, the triton package installed), else None. Imported here, not at the top, so a
    CPU run never imports Triton."""
    if not (logits.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    from minirlhf import triton_logprobs
    return triton_logprobs if triton_logprobs.available(logits) else None


def check_temperature(temperature: float, where: str) -> None:
    """ValueError unless temperature > 0: log-probs at T <= 0 are undefined (greedy decoding has no
    log-probs of its own; `engine.sample_next` reports T = 1 ones for it)."""
    if not temperature > 0:
        raise ValueError(f"{where}: temperature must be > 0, got {temperature}")


def logprobs_from_logits(logits, labels, temperature: float = 1.0):
    """log p(label) under softmax(logits / temperature): (..., V), (...) -> (...).

    Computed in float32 at least (bf16 log-softmax loses the small differences PPO ratios depend on).
    With MINIRLHF_TRITON=1 on CUDA the same numbers come from `triton_logprobs` (one pass over each row).
    ValueError for temperature <= 0.
    """
    check_temperature(temperature, "logprobs_from_logits")
    kernel = _triton_kernel_for(logits)
    if kernel is not None:
        return kernel.logprobs_and_entropy(logits, labels, temperature)[0]
    logits = upcast(logits)
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)  # (..., V)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (...)


def entropy_from_logits(logits):
    """Entropy of softmax(logits) per position, (..., V) -> (...): -sum_j p_j log p_j.

    Summed over log p, not over the logits (the equal logsumexp(z) - sum_j p_j z_j subtracts two numbers as
    large as the logits and loses float32 digits when they are large); a -inf logit (a masked token) adds
    0, as p log p -> 0 does, where 0 * -inf would give NaN.
    """
    logp = F.log_softmax(upcast(logits), dim=-1)  # (..., V)
    p = logp.exp()  # (..., V)
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)  # (...)


def logprobs_and_entropy(logits, labels, temperature: float = 1.0):
    """`logprobs_from_logits(logits, labels, T)` and the entropy of softmax(logits / T), (...) each.

    What PPO and GRPO need from the same logits; with MINIRLHF_TRITON=1 on CUDA both come from one pass
    over each row (`triton_logprobs`), else from the two plain functions above.
    """
    check_temperature(temperature, "logprobs_and_entropy")
    kernel = _triton_kernel_for(logits)
    if kernel is not None:
        return kernel.logprobs_and_entropy(logits, labels, temperature)
    logits = upcast(logits)  # once, for both
    logp = logprobs_from_logits(logits, labels, temperature)  # (...)
    return logp, entropy_from_logits(logits / temperature if temperature != 1.0 else logits)


def kl_k1(logp, ref_logp):
    """k1 = log(p/q) per token: the unbiased estimator, and the per-token penalty in PPO's reward."""
    return logp - ref_logp


def kl_k2(logp, ref_logp):
    """k2 = (log(p/q))^2 / 2: low variance, biased in value; yet its expected gradient under p is exactly
    the gradient of KL(p || q): E_p[log(p/q) grad log p] = grad KL, at any size of difference."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp, ref_logp):
    """k3 = (q/p - 1) - log(q/p) = expm1(-log_ratio) + log_ratio: unbiased and never negative.

    As a value it estimates KL(p || q) like k1. As a loss term (GRPO's) its gradient is another matter: on
    samples from p, E_p[grad k3] = E_p[(1 - q/p) grad log p] = grad KL(q || p), the gradient of the
    *forward* KL; k1 as a loss has zero expected gradient (E_p[grad log p] = 0), which is why PPO puts k1
    in the reward instead of the loss."""
    log_ratio = logp - ref_logp
    return torch.expm1(-log_ratio) + log_ratio


# ----------------------------------------------------------------------------------------------------
# Fused LM head + log-probs: the (N, V) logits never exist at once
#
# For N = B*T rows, V = 50257 and float32, the logits alone are 4 N V bytes (1.6 GB at B=8, T=1024),
# and log_softmax, its backward and the logits' gradient each hold as much again. The per-token
# log-prob needs only two numbers per row: the label's logit and the row's logsumexp. So we walk over
# chunks of rows: compute the chunk's logits, keep those two numbers, drop the logits. The backward
# needs the softmax again, so it recomputes each chunk's logits from the saved inputs (one extra matmul
# of N x C x V) and turns them straight into this chunk's share of the gradients:
#
#   z = (h W^T) / T              logp = z[y] - lse(z)          H = lse(z) - sum_j p_j z_j
#   dlogp/dz = onehot(y) - p     dH/dz_j = -p_j (log p_j + H)  dL/dlogits = dL/dz / T
#   dL/dh = dL/dlogits @ W       dL/dW = sum over chunks of dL/dlogits^T @ h
#
# The same idea (chunked, recomputing linear + cross-entropy) is in Liger-Kernel's fused linear
# cross-entropy (Hsu et al. 2024, arXiv:2410.10989) and in Wijmans et al. 2024, "Cut Your Losses in
# Large-Vocabulary Language Models" (arXiv:2411.09009); this version returns per-token log-probs (and
# entropies) with an arbitrary upstream gradient, which is what PPO and DPO need.

FUSED_VOCAB_THRESHOLD = 8192  # `linear_logprobs` uses the fused path from this vocabulary size up
_CHUNK_ELEMENTS = 1 << 25  # default chunk: about 32M logits (128 MB in float32) per chunk of rows


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk so that one chunk holds about 32M logits (667 rows at V = 50257)."""
    return max(1, _CHUNK_ELEMENTS // vocab_size)


def _matmul_dtype(hidden, weight):
    """The dtype the LM-head matmul runs in: autocast's when autocast is on, else the inputs' own."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"fused_linear_logprobs: hidden is {hidden.dtype} but weight is {weight.dtype}")
    return hidden.dtype


def _chunk_logits(h, weight, matmul_dtype, temperature: float):
    """Tempered logits of one chunk of rows, in at least float32: (n, C), (V, C) -> (n, V)."""
    z = upcast(h.to(matmul_dtype) @ weight.to(matmul_dtype).T)  # (n, V)
    return z / temperature if temperature != 1.0 else z


class _FusedLinearLogprobs(torch.autograd.Function):
    """(hidden (N, C), weight (V, C), labels (N,)) -> (logp (N,), entropy (N,) or (0,)), chunked."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature: float, chunk_size: int, with_entropy: bool):
        """Chunks of `chunk_size` rows: z = hidden W^T / temperature for one chunk at a time -> logp (N,) =
        z[label] - logsumexp(z), and with `with_entropy` the entropy (N,) of softmax(z) (else an empty (0,)
        non-differentiable tensor).

        The matmul runs in autocast's dtype (or the inputs'), the rest in at least float32, autocast off. Saves
        the inputs, the rows' logsumexp and the entropies for the backward; no (N, V) tensor is kept.
        """
        N = hidden.size(0)
        matmul_dtype = _matmul_dtype(hidden, weight)
        out_dtype = upcast(torch.empty((), dtype=matmul_dtype)).dtype  # float32, or float64 for float64
        logp = torch.empty(N, dtype=out_dtype, device=hidden.device)  # (N,)
        lse = torch.empty(N, dtype=out_dtype, device=hidden.device)  # (N,) logsumexp of each row
        entropy = torch.empty(N if with_entropy else 0, dtype=out_dtype, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, N, chunk_size):
                e = min(s + chunk_size, N)
                z = _chunk_logits(hidden[s:e], weight, matmul_dtype, temperature)  # (n, V)
                lse[s:e] = torch.logsumexp(z, dim=-1)  # (n,)
                logp[s:e] = z.gather(-1, labels[s:e, None]).squeeze(-1) - lse[s:e]
                if with_entropy:
                    z.sub_(lse[s:e, None])  # (n, V) log p, in place
                    entropy[s:e] = -z.exp().mul_(z).sum(-1)  # -sum_j p_j log p_j (as entropy_from_logits)
                del z  # only this chunk's logits are ever alive
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.temperature, ctx.chunk_size, ctx.matmul_dtype = temperature, chunk_size, matmul_dtype
        ctx.with_entropy = with_entropy
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @once_differentiable  # built in place from recomputed logits: a second derivative is an error, not a wrong number
    def backward(ctx, grad_logp, grad_entropy):
        """Recompute each chunk's logits from the saved inputs and turn them into that chunk's gradients ->
        (dL/dhidden (N, C), dL/dweight (V, C), None, None, None, None).

        dL/dz = g_logp (onehot(y) - p) - g_H p (log p + H), divided by the temperature (the formulas above).
        dL/dweight is accumulated in at least float32 and returned in the weight's dtype. A gradient is None for
        an input that does not need one, and all are None when neither output received a gradient.
        """
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        T, chunk_size, matmul_dtype = ctx.temperature, ctx.chunk_size, ctx.matmul_dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_entropy is not None and not ctx.with_entropy:
            grad_entropy = None
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        N = hidden.size(0)
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, C)
        acc_dtype = upcast(torch.empty((), dtype=weight.dtype)).dtype  # accumulate dW in >= float32
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_w else None  # (V, C)
        w = weight.to(matmul_dtype)  # (V, C)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, N, chunk_size):
                e = min(s + chunk_size, N)
                h = hidden[s:e].to(matmul_dtype)  # (n, C)
                logp_all = _chunk_logits(h, w, matmul_dtype, T).sub_(lse[s:e, None])  # (n, V) log p, recomputed
                # dL/dz = g (onehot(y) - p) - gH p (log p + H), built in place to hold few (n, V) blocks
                if grad_entropy is None:
                    dz = logp_all.exp_()  # (n, V) p, overwriting log p
                    dz.mul_(-grad_logp[s:e, None].to(dz.dtype))
                else:
                    p = logp_all.exp()  # (n, V)
                    gH = grad_entropy[s:e, None].to(p.dtype)  # (n, 1)
                    dz = logp_all.add_(entropy[s:e, None]).mul_(p).mul_(-gH)  # (n, V), overwriting log p
                    if grad_logp is not None:
                        dz.addcmul_(p, grad_logp[s:e, None].to(p.dtype), value=-1.0)
                    del p
                if grad_logp is not None:
                    dz.scatter_add_(-1, labels[s:e, None], grad_logp[s:e, None].to(dz.dtype))
                if T != 1.0:
                    dz /= T  # dL/dlogits
                dlogits = dz.to(matmul_dtype)  # (n, V)
                if need_h:
                    grad_h[s:e] = (dlogits @ w).to(hidden.dtype)  # (n, C)
                if need_w and dlogits.dtype == acc_dtype:
                    grad_w.addmm_(dlogits.T, h)  # (V, C) += (V, n) @ (n, C), in place: no (V, C) temporary
                elif need_w:
                    grad_w.add_(dlogits.T @ h)  # bf16/fp16 matmul, accumulated in float32
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None


def fused_linear_logprobs(hidden, weight, labels, temperature: float = 1.0, chunk_size: int | None = None,
                          return_entropy: bool = False):
    """log p(label) under softmax(hidden @ weight.T / temperature), never holding all the logits.

    hidden: (..., C) final hidden states (after the last LayerNorm); weight: (V, C) the LM head (tied
    embedding); labels: (...) ids in [0, V) -- no ignore value: pass any valid id (e.g. the pad id) at
    positions you will mask afterwards. Returns log-probs (...) in at least float32, and with
    `return_entropy=True` also the entropy (...) of softmax(logits / temperature), i.e. of the
    sampling distribution.

    Same numbers as `logprobs_from_logits(hidden @ weight.T, labels, temperature)` (and
    `entropy_from_logits(upcast(hidden @ weight.T) / temperature)`), gradients included, with peak extra
    memory of a few (chunk_size, V) float32 blocks instead of several (N, V) ones. The matmul runs in the
    autocast dtype under autocast, else in the inputs' dtype; softmax and reductions run in >= float32.
    chunk_size: rows per chunk; None = `default_chunk_size(V)`. First derivatives only: the backward is
    written by hand, so a second derivative (create_graph=True) raises instead of being wrong.
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"fused_linear_logprobs: hidden {tuple(hidden.shape)} does not match labels "
                         f"{tuple(labels.shape)} (expected hidden = labels.shape + (C,))")
    if weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        raise ValueError(f"fused_linear_logprobs: weight {tuple(weight.shape)} is not (V, {hidden.size(-1)})")
    check_temperature(temperature, "fused_linear_logprobs")
    chunk_size = default_chunk_size(weight.size(0)) if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"fused_linear_logprobs: chunk_size must be >= 1, got {chunk_size}")
    h = hidden.reshape(-1, hidden.size(-1))  # (N, C)
    logp, entropy = _FusedLinearLogprobs.apply(h, weight, labels.reshape(-1), float(temperature), chunk_size,
                                               return_entropy)
    logp = logp.view(labels.shape)  # (...)
    return (logp, entropy.view(labels.shape)) if return_entropy else logp


def use_fused_logprobs(vocab_size: int, fused: bool | None = None) -> bool:
    """The dispatch rule: `fused` if given, else fused from `FUSED_VOCAB_THRESHOLD` tokens up.

    Below the threshold the full logits are small and the plain path is faster (no recompute).
    """
    return vocab_size >= FUSED_VOCAB_THRESHOLD if fused is None else fused


def linear_logprobs(hidden, weight, labels, temperature: float = 1.0, return_entropy: bool = False,
                    fused: bool | None = None, chunk_size: int | None = None):
    """Per-token log-probs (and entropies) from final hidden states and the LM-head weight.

    hidden (..., C), weight (V, C), labels (...) -> logp (...) [, entropy (...)], at `temperature`.
    The plain path materialises `hidden @ weight.T`; the fused path (`fused_linear_logprobs`) does not.
    fused: None = by vocabulary size (`use_fused_logprobs`), True/False forces one path.
    """
    if use_fused_logprobs(weight.size(0), fused):
        return fused_linear_logprobs(hidden, weight, labels, temperature, chunk_size, return_entropy)
    logits = hidden @ weight.T  # (..., V)
    if not return_entropy:
        return logprobs_from_logits(logits, labels, temperature)  # (...)
    return logprobs_and_entropy(logits, labels, temperature)  # (...), (...)
