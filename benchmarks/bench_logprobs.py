"""Benchmark: `ops.fused_linear_logprobs` vs the naive LM head + log_softmax + gather: peak memory and time.

Run:  python benchmarks/bench_logprobs.py [--B 8] [--T 1024] [--V 50257] [--C 768] [--device auto|cpu|cuda]
                                         [--chunk-size 0] [--repeats 3] [--threads N]
      (defaults: B=8, T=1024 on CUDA; B=2, T=256 on CPU; V=50257, C=768 on both)

What is measured: one forward + backward of per-token log-probs from final hidden states (B, T, C) and
the LM-head weight (V, C), both leaf tensors that require grad, with a random upstream gradient per
token (as PPO's and DPO's losses give). Naive: `logprobs_from_logits(hidden @ weight.T, labels)`;
fused: `fused_linear_logprobs(hidden, weight, labels)`. On CUDA under bf16 autocast (the training
setting: float32 master weights, bf16 matmuls), on CPU in float32.

Peak memory is the extra memory above the inputs:
  * CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus the memory held
    before the call (exact for PyTorch's allocator);
  * CPU: each variant runs in its own fresh subprocess, which resets the kernel's resident-set
    high-water mark (writing 5 to /proc/self/clear_refs, Linux >= 4.0), runs one forward + backward,
    and reports VmHWM minus the VmRSS it had just before (both from /proc/self/status). Large tensors
    are mmap-ed and returned to the OS when freed, so the high-water mark tracks them; small allocations
    add a few MB of noise. Where clear_refs is unavailable it falls back to the growth of
    `resource.getrusage(RUSAGE_SELF).ru_maxrss`, which under-reports if something earlier peaked higher.
    (tracemalloc cannot see torch's allocations, hence this method.) The timing rounds come after.
Time is the best of `--repeats` forward + backward calls after one warm-up call. The values and
gradients of both variants are compared (max abs difference) as a sanity check.

Deliberate simplifications: random inputs; one shape per run; no labels-ignore handling (none exists).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from bench_train import environment, print_table, sync

from minirlhf.common import resolve_device
from minirlhf.ops import default_chunk_size, fused_linear_logprobs, logprobs_from_logits


def make_inputs(B, T, V, C, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g).to(device).requires_grad_()  # (B, T, C) like ln_f outputs
    weight = (0.02 * torch.randn(V, C, generator=g)).to(device).requires_grad_()  # (V, C) GPT-2's init scale
    labels = torch.randint(0, V, (B, T), generator=g).to(device)  # (B, T)
    grad = torch.randn(B, T, generator=g).to(device)  # (B, T) upstream gradient per token
    return hidden, weight, labels, grad


def forward_backward(variant, hidden, weight, labels, grad, chunk_size, device):
    hidden.grad = weight.grad = None
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with ctx:
        if variant == "naive":
            logp = logprobs_from_logits(hidden @ weight.T, labels)  # (B, T), via (B, T, V) logits
        else:
            logp = fused_linear_logprobs(hidden, weight, labels, chunk_size=chunk_size or None)  # (B, T)
    (logp * grad).sum().backward()
    return logp.detach()


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


_HWM_RESET = True


def rss_and_reset_high_water() -> int:
    """Bytes resident now; resets the kernel's high-water mark to it (falls back to ru_maxrss)."""
    global _HWM_RESET
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return _status_kb("VmRSS") * 1024
    except OSError:
        _HWM_RESET = False
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux


def high_water() -> int:
    """Bytes: the resident-set high-water mark since the reset."""
    if _HWM_RESET:
        return _status_kb("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(variant, B, T, V, C, device, chunk_size, repeats) -> dict:
    """Peak extra memory (bytes) and best seconds of one forward + backward, in this process."""
    hidden, weight, labels, grad = make_inputs(B, T, V, C, device)
    if device.type == "cuda":
        forward_backward(variant, hidden, weight, labels, grad, chunk_size, device)  # one-time allocations
        hidden.grad = weight.grad = None  # (cuBLAS workspace, ...) land before the peak, for both variants
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        logp = forward_backward(variant, hidden, weight, labels, grad, chunk_size, device)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        before = rss_and_reset_high_water()
        logp = forward_backward(variant, hidden, weight, labels, grad, chunk_size, device)
        peak = high_water() - before
    result = {"peak": peak, "logp": logp.float().cpu(), "dh": hidden.grad.float().cpu(), "dw": weight.grad.float().cpu()}
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        forward_backward(variant, hidden, weight, labels, grad, chunk_size, device)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    result["seconds"] = best
    return result


def child(args) -> None:
    """CPU: measure one variant in this fresh process; print a JSON line; save tensors for the check."""
    device = torch.device("cpu")
    r = measure(args.child, args.B, args.T, args.V, args.C, device, args.chunk_size, args.repeats)
    torch.save({k: r[k] for k in ("logp", "dh", "dw")}, args.child_out)
    print(json.dumps({"peak": r["peak"], "seconds": r["seconds"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=0)
    ap.add_argument("--T", type=int, default=0)
    ap.add_argument("--V", type=int, default=50257)
    ap.add_argument("--C", type=int, default=768)
    ap.add_argument("--chunk-size", type=int, default=0, help="rows per chunk; 0 = default_chunk_size(V)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)

    os.environ["MINIRLHF_TRITON"] = "0"  # the naive row is plain PyTorch, whatever the caller's environment
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    B, T = args.B or (8 if cuda else 2), args.T or (1024 if cuda else 256)
    args.B, args.T = B, T
    chunk = args.chunk_size or default_chunk_size(args.V)
    print(environment(device))
    print(f"config: B={B}, T={T}, V={args.V}, C={args.C} (N = B*T = {B * T} rows); chunk {chunk} rows; "
          f"{'bf16 autocast' if cuda else 'float32'}; forward + backward with a random upstream gradient; "
          f"time = best of {args.repeats} after one warm-up")
    results = {}
    tmp = tempfile.TemporaryDirectory(prefix="bench_logprobs_")  # the CPU children's tensors, for the check
    for variant in ("naive", "fused"):
        if cuda:
            results[variant] = measure(variant, B, T, args.V, args.C, device, args.chunk_size, args.repeats)
            torch.cuda.empty_cache()
        else:  # a fresh process per variant, so each one's resident-set high-water mark is its own
            out_file = os.path.join(tmp.name, f"{variant}.pt")
            cmd = [sys.executable, __file__, f"--child={variant}", f"--child-out={out_file}", f"--B={B}", f"--T={T}",
                   f"--V={args.V}", f"--C={args.C}", f"--chunk-size={args.chunk_size}", f"--repeats={args.repeats}",
                   f"--threads={torch.get_num_threads()}"]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[variant] = {**json.loads(line), **torch.load(out_file)}
    tmp.cleanup()
    n, f = results["naive"], results["fused"]
    diffs = {k: (n[k] - f[k]).abs().max().item() for k in ("logp", "dh", "dw")}
    logits_mb = B * T * args.V * 4 / 2**20
    rows = []
    for name, r in (("naive (log_softmax + gather)", n), ("fused_linear_logprobs", f)):
        rows.append([name, f"{r['peak'] / 2**20:,.0f}", f"{r['peak'] / n['peak']:.3f}", f"{1e3 * r['seconds']:.1f}",
                     f"{r['seconds'] / n['seconds']:.2f}x"])
    print_table(["variant", "peak extra MiB", "memory vs naive", "ms fwd+bwd", "time vs naive"], rows)
    print(f"(one float32 copy of the full logits is {logits_mb:,.0f} MiB; max |naive - fused|: "
          f"logp {diffs['logp']:.2e}, d hidden {diffs['dh']:.2e}, d weight {diffs['dw']:.2e})")


if __name__ == "__main__":
    main()
