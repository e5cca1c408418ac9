"""A Triton kernel for per-token log-probs and entropy that reads each logits row once (CUDA only).

    from minirlhf import triton_logprobs
    logp, entropy = triton_logprobs.logprobs_and_entropy(logits, labels, temperature=0.7)  # (B, T) each

PPO, GRPO and the evaluation need two numbers per position from the (B, T, V) logits: the label's
log-prob and the entropy of the (tempered) softmax. The plain PyTorch path (`ops.logprobs_from_logits`
and `ops.entropy_from_logits`, the references this file is tested against) runs log_softmax, gather,
softmax, a product and two reductions: several full passes over (B, T, V) in memory, plus the (B, T, V)
intermediates autograd keeps. Everything needed fits in three numbers per row, so one pass suffices:

    z = logits / T
    m = max_j z_j,   s = sum_j exp(z_j - m),   t = sum_j exp(z_j - m) z_j      (one pass, online)
    lse = m + log s          logp = z_y - lse          H = lse - t / s = lse - E_p[z]

The backward needs p = exp(z - lse) again; it re-reads the row (saved: the logits themselves, in their own
dtype, and three floats per row -- no float32 (B, T, V) intermediate) and writes the logits' gradient in
the same pass:

    dlogp/dz_j = 1[j = y] - p_j          dH/dz_j = -p_j (z_j - E_p[z])          dL/dlogits = dL/dz / T

(the entropy derivative: d lse/dz_j = p_j and d E_p[z]/dz_j = p_j (1 + z_j - E_p[z]), so their difference).

"Online" softmax (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax", Algorithm 3):
walk over the row in blocks of BLOCK columns, keeping per lane a running max m and the sums s and t
relative to it; when the max grows, rescale the sums by exp(m_old - m_new). At the end the lanes are
merged the same way. The same trick is at the heart of FlashAttention. The sums are kept relative to
the running max (t sums exp(z - m) (z - m)), and logp = (z_y - M) - log S, as log_softmax computes it, so
large logits cost no more precision than on the plain path.

Dispatch (`ops.logprobs_from_logits`, `ops.logprobs_and_entropy`, so PPO, GRPO,
DPO and the evaluation): opt in with the environment variable `MINIRLHF_TRITON=1`; then float32 / bf16
/ fp16 logits on a CUDA device go through the kernel when the `triton` package imports (it comes with
PyTorch's CUDA builds; `pip install -e ".[triton]"` otherwise). Everywhere else (CPU, float64, no
Triton, the variable unset) the plain PyTorch path runs. Opt-in because the kernel has so far run only
under Triton's interpreter: the tests run it on the CPU (`TRITON_INTERPRET=1`) against
float64 references; `benchmarks/bench_triton_logprobs.py` measures it against the plain path and
`torch.compile` on a GPU.

Deliberate simplifications: one program per row, the row walked in fixed blocks (no autotuning); the
statistics are float32 whatever the logits' dtype (as the plain path, which upcasts); the gradient is
written in the logits' dtype; no second derivative (an error says so); labels must be valid ids (no
ignore index: mask afterwards, as with the plain path) -- an id outside [0, V) gives a NaN log-prob,
which the training stages' NaN guard reports, where the plain path raises at once (checking on the host
would cost a GPU sync per call).
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # the plain PyTorch path serves everyone without Triton
    triton = None

_BLOCK = 1024  # columns per step of the walk over a row (a power of two)


def available(logits: torch.Tensor) -> bool:
    """True when the kernel should serve these logits: `MINIRLHF_TRITON=1`, Triton imports, the tensor is
    float32/bf16/fp16, on CUDA (or anywhere under `TRITON_INTERPRET=1`, which is how the tests run it on
    the CPU)."""
    if triton is None or os.environ.get("MINIRLHF_TRITON") != "1":
        return False
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    return logits.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _forward_kernel(logits_ptr, labels_ptr, logp_ptr, entropy_ptr, row_max_ptr, log_s_ptr, mean_rel_ptr,
                        V, inner, stride_outer, stride_inner, inv_temperature, BLOCK: tl.constexpr):
        """One program per row: logp and entropy; saves M, log S and E_p[z] - M for the backward.

        Everything is kept relative to the running max (z - m), as log_softmax does, so that logits of
        order 1e3 lose no more precision than the plain path: t is the sum of exp(z - m) (z - m)."""
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + (row // inner) * stride_outer + (row % inner) * stride_inner  # a strided view's row
        cols = tl.arange(0, BLOCK)  # (BLOCK,)
        m = tl.full((BLOCK,), -3.4028234663852886e38, tl.float32)  # per-lane running max: float32's lowest, finite
        # (so m_old - m_new is defined) and no larger than any finite logit (a row of them still has its max)
        s = tl.zeros((BLOCK,), tl.float32)  # per lane: sum of exp(z - m)
        t = tl.zeros((BLOCK,), tl.float32)  # per lane: sum of exp(z - m) (z - m)
        for start in range(0, V, BLOCK):
            inside = start + cols < V
            z = tl.load(row_ptr + start + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_temperature
            m_new = tl.maximum(m, z)
            rescale = tl.exp(m - m_new)  # 1 where the max did not move
            e = tl.exp(z - m_new)  # 0 outside the row and at -inf logits
            z_rel = tl.where(e > 0.0, z - m_new, 0.0)  # where e = 0, e * (z - m_new) would be 0 * -inf = NaN
            # moving the old sums to the new max:
            #   exp(z - m_new) (z - m_new) = rescale exp(z - m_old) ((z - m_old) + (m_old - m_new))
            t = rescale * (t + (m - m_new) * s) + e * z_rel
            s = s * rescale + e
            m = m_new
        # merge the lanes the same way: the row's max M, then each lane's sums moved to it
        M = tl.max(m, axis=0)
        to_M = tl.exp(m - M)  # (BLOCK,) 0 for lanes that saw only -inf
        S = tl.sum(s * to_M, axis=0)
        mean_rel = tl.sum(to_M * (t + (m - M) * s), axis=0) / S  # E_p[z] - M
        log_s = tl.log(S)  # lse = M + log S
        label = tl.load(labels_ptr + row)
        valid = (label >= 0) & (label < V)  # an id outside the vocabulary reads nothing and gives NaN
        z_y = tl.load(row_ptr + label, mask=valid, other=float("nan")).to(tl.float32) * inv_temperature
        tl.store(logp_ptr + row, (z_y - M) - log_s)  # as log_softmax: (z - max) - log sum exp(z - max)
        tl.store(entropy_ptr + row, log_s - mean_rel)  # H = lse - E_p[z]
        tl.store(row_max_ptr + row, M)
        tl.store(log_s_ptr + row, log_s)
        tl.store(mean_rel_ptr + row, mean_rel)

    @triton.jit
    def _backward_kernel(logits_ptr, labels_ptr, row_max_ptr, log_s_ptr, mean_rel_ptr, grad_logp_ptr,
                         grad_entropy_ptr, grad_logits_ptr, V, inner, stride_outer, stride_inner, inv_temperature,
                         BLOCK: tl.constexpr):
        """One program per row: dL/dlogits_j = (g (1[j = y] - p_j) - gH p_j (z_j - E_p[z])) / T."""
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + (row // inner) * stride_outer + (row % inner) * stride_inner
        out_ptr = grad_logits_ptr + row * V  # the gradient is written contiguous
        M = tl.load(row_max_ptr + row)
        log_s = tl.load(log_s_ptr + row)
        mean_rel = tl.load(mean_rel_ptr + row)
        g = tl.load(grad_logp_ptr + row).to(tl.float32)
        g_h = tl.load(grad_entropy_ptr + row).to(tl.float32)
        label = tl.load(labels_ptr + row)
        cols = tl.arange(0, BLOCK)  # (BLOCK,)
        for start in range(0, V, BLOCK):
            inside = start + cols < V
            z_rel = tl.load(row_ptr + start + cols, mask=inside, other=0.0).to(tl.float32) * inv_temperature - M
            p = tl.exp(z_rel - log_s)  # (BLOCK,)
            # p = 0 at a -inf logit, where (z - E_p[z]) is -inf: its entropy term is 0, not NaN
            entropy_term = p * tl.where(p > 0.0, z_rel - mean_rel, 0.0)
            dz = tl.where(start + cols == label, g, 0.0) - g * p - g_h * entropy_term
            tl.store(out_ptr + start + cols, (dz * inv_temperature).to(grad_logits_ptr.dtype.element_ty), mask=inside)


def _as_3d(logits: torch.Tensor, labels: torch.Tensor):
    """(..., V) logits and (...) labels -> (A, B, V) logits with unit column stride and (A * B,) labels.

    The usual input is a slice such as `logits[:, P - 1:-1]`: its rows are not evenly spaced in memory,
    but they are in two levels (A sequences of B positions), which the kernels address directly instead
    of copying the slice."""
    V = logits.size(-1)
    if logits.dim() == 1:
        logits = logits[None]
    logits3 = logits.reshape(-1, logits.size(-2), V)  # a view for slices along the positions
    if logits3.stride(-1) != 1:
        logits3 = logits3.contiguous()
    return logits3, labels.reshape(-1).contiguous()


class _TritonLogprobs(torch.autograd.Function):
    """(logits (A, B, V), labels (A * B,)) -> (logp (A * B,), entropy (A * B,)), float32; grads to the logits."""

    @staticmethod
    def forward(ctx, logits, labels, temperature: float):
        """`_forward_kernel`, one program per row: logits (A, B, V), labels (A * B,) -> logp, entropy (A * B,) float32.

        Saves the logits themselves and three float32s per row (max, log of the sum, E_p[z] - max) for the backward.
        """
        A, B, V = logits.shape
        N = A * B
        logp, entropy, row_max, log_s, mean_rel = (torch.empty(N, dtype=torch.float32, device=logits.device)
                                                   for _ in range(5))  # (N,) each
        _forward_kernel[(N,)](logits, labels, logp, entropy, row_max, log_s, mean_rel, V, B, logits.stride(0),
                              logits.stride(1), 1.0 / temperature, BLOCK=_BLOCK)
        ctx.save_for_backward(logits, labels, row_max, log_s, mean_rel)  # the logits (their dtype) + 3 floats a row
        ctx.temperature = temperature
        return logp, entropy

    @staticmethod
    @once_differentiable  # the backward is a kernel, not a graph: a second derivative is an error, not a wrong number
    def backward(ctx, grad_logp, grad_entropy):
        """`_backward_kernel`, one program per row -> (dL/dlogits (A, B, V), contiguous, in the logits' dtype,
        None, None)."""
        logits, labels, row_max, log_s, mean_rel = ctx.saved_tensors
        A, B, V = logits.shape
        grad_logits = torch.empty((A, B, V), dtype=logits.dtype, device=logits.device)  # contiguous
        _backward_kernel[(A * B,)](logits, labels, row_max, log_s, mean_rel, grad_logp.contiguous(),
                                   grad_entropy.contiguous(), grad_logits, V, B, logits.stride(0), logits.stride(1),
                                   1.0 / ctx.temperature, BLOCK=_BLOCK)
        return grad_logits, None, None


def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """log p(label) and the entropy of softmax(logits / temperature): (..., V), (...) -> (...), (...).

    Float32 outputs; the same numbers as `ops.logprobs_from_logits(logits, labels, temperature)` and
    `ops.entropy_from_logits(upcast(logits) / temperature)`, gradients included. Needs `available(logits)`.
    """
    if not available(logits):
        raise RuntimeError("triton_logprobs: needs MINIRLHF_TRITON=1, the triton package and float32/bf16/fp16 "
                           "logits on a CUDA device (or TRITON_INTERPRET=1); use ops.logprobs_from_logits otherwise")
    if logits.dim() < 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(f"triton_logprobs: logits {tuple(logits.shape)} do not match labels "
                         f"{tuple(labels.shape)} (expected logits = labels.shape + (V,))")
    if temperature <= 0:
        raise ValueError(f"triton_logprobs: temperature must be > 0, got {temperature}")
    if labels.numel() == 0:  # nothing to launch; empty outputs still connected to the logits
        empty = logits.float().sum(-1)  # (...) with no elements
        return empty, empty.clone()
    logits3, flat_labels = _as_3d(logits, labels)
    logp, entropy = _TritonLogprobs.apply(logits3, flat_labels, float(temperature))
    return logp.view(labels.shape), entropy.view(labels.shape)
