"""Benchmark: the Triton log-prob + entropy kernel vs plain PyTorch and torch.compile: time and memory.

Run:  python benchmarks/bench_triton_logprobs.py [--B 8] [--T 1024] [--V 50257] [--repeats 5]   (CUDA)
      TRITON_INTERPRET=1 python benchmarks/bench_triton_logprobs.py --device cpu --B 2 --T 8 --V 300
          (a smoke run on the CPU through Triton's interpreter: checks the script and the numbers agree;
           its times mean nothing)

What is measured: per-token log-probs of the labels and the entropy of softmax(logits / T) from
(B, T, V) bf16 logits (what the LM head gives under bf16 autocast), forward + backward with a random
upstream gradient on both outputs (what PPO's and GRPO's losses give), three ways:

  * plain:    `ops.logprobs_from_logits` + `ops.entropy_from_logits` with the kernel switched off
              (upcast to float32, log_softmax + gather, softmax * logits): several (B, T, V) passes and
              float32 intermediates kept for backward;
  * compiled: the same function through `torch.compile` (what the compiler fuses for free);
  * triton:   `triton_logprobs.logprobs_and_entropy`, one read of each row forward, one read and one
              write backward, two floats per row saved.

Time = best of `--repeats` calls after two warm-ups (the compile happens in the warm-up). Peak memory
= `torch.cuda.max_memory_allocated()` during one call minus the memory held before (the inputs; the
logits' gradient, which every variant allocates, is counted).
The values and gradients are compared with the plain path (max abs difference). The compiled row is
measured last, after the table of the other two is printed, so a compile that fails or is killed at a
time limit loses only its own row (a failure is reported in the table).

Deliberate simplifications: random logits; one shape per run; CUDA only, except the interpreter smoke run.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MINIRLHF_TRITON", "1")  # this script is about the kernel; the plain row switches it off

import torch  # noqa: E402
from bench_train import environment, print_table, sync  # noqa: E402

from minirlhf import ops, triton_logprobs  # noqa: E402
from minirlhf.common import resolve_device  # noqa: E402


def plain(logits, labels, temperature):
    """The reference: float32 log_softmax + gather, and the entropy of the same tempered logits."""
    logp = ops.logprobs_from_logits(logits, labels, temperature)  # (B, T)
    return logp, ops.entropy_from_logits(ops.upcast(logits) / temperature)  # (B, T)


def run_once(fn, logits, labels, temperature, g_logp, g_entropy):
    """One forward + backward; returns (logp, entropy) and leaves the gradient in logits.grad."""
    logits.grad = None
    logp, entropy = fn(logits, labels, temperature)
    ((logp * g_logp).sum() + (entropy * g_entropy).sum()).backward()
    return logp.detach(), entropy.detach()


def measure(name, fn, logits, labels, temperature, g_logp, g_entropy, device, repeats):
    """(values, peak extra bytes, best seconds) of one forward + backward."""
    os.environ["MINIRLHF_TRITON"] = "1" if name == "triton" else "0"
    for _ in range(2):  # warm-up: compilation
        run_once(fn, logits, labels, temperature, g_logp, g_entropy)
    logits.grad = None  # the peak below then counts the new gradient, as every row's does
    sync(device)
    peak = 0
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    logp, entropy = run_once(fn, logits, labels, temperature, g_logp, g_entropy)
    sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base  # read before any copy made for the comparison
    values = (logp.float().cpu(), entropy.float().cpu(), logits.grad.float().cpu())
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        run_once(fn, logits, labels, temperature, g_logp, g_entropy)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return values, peak, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--V", type=int, default=50257)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("bench_triton_logprobs: the kernel runs on CUDA only; for a CPU smoke run set "
                         "TRITON_INTERPRET=1 (Triton's interpreter) and pass small sizes")
    if triton_logprobs.triton is None:
        raise SystemExit("bench_triton_logprobs: the triton package is not installed (pip install -e '.[triton]')")
    g = torch.Generator().manual_seed(0)
    B, T, V = args.B, args.T, args.V
    logits = (3 * torch.randn(B, T, V, generator=g)).to(device, torch.bfloat16).requires_grad_()  # (B, T, V)
    labels = torch.randint(0, V, (B, T), generator=g).to(device)  # (B, T)
    g_logp, g_entropy = torch.randn(2, B, T, generator=g).to(device)  # upstream gradients, (B, T) each
    print(environment(device))
    print(f"config: B={B}, T={T}, V={V} (N = {B * T} rows), bf16 logits, temperature {args.temperature}; "
          f"forward + backward of log-probs and entropy; time = best of {args.repeats} after two warm-ups")

    def report(results) -> None:
        ref_values, ref_peak, ref_seconds = results["plain"]
        rows = []
        for name, result in results.items():
            if isinstance(result, str):  # the variant failed
                rows.append([name, result, "", "", "", "", ""])
                continue
            values, peak, seconds = result
            diff = max((a - b).abs().max().item() for a, b in zip(values[:2], ref_values[:2]))  # logp, entropy
            grad_diff = ((values[2] - ref_values[2]).abs().max() / ref_values[2].abs().max()).item()
            rows.append([name, f"{peak / 2**20:,.0f}", f"{peak / ref_peak:.3f}" if ref_peak else "-",
                         f"{1e3 * seconds:.2f}", f"{ref_seconds / seconds:.2f}x", f"{diff:.1e}", f"{grad_diff:.1e}"])
        print_table(["variant", "peak extra MiB", "memory vs plain", "ms fwd+bwd", "speed vs plain",
                     "max |diff| logp, H", "d logits diff / max"], rows)

    def attempt(name, fn):  # the measurement, or the reason it failed (a Triton or compile problem costs one row)
        try:
            return measure(name, fn, logits, labels, args.temperature, g_logp, g_entropy, device, args.repeats)
        except Exception as e:
            return f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}"
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # the reference first (no try: without it there is nothing to compare), then the kernel
    results = {"plain": measure("plain", plain, logits, labels, args.temperature, g_logp, g_entropy, device,
                                args.repeats)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    results["triton"] = attempt("triton", triton_logprobs.logprobs_and_entropy)
    report(results)
    print(f"(the bf16 logits are {B * T * V * 2 / 2**20:,.0f} MiB, one float32 copy {B * T * V * 4 / 2**20:,.0f} MiB; "
          f"d logits is stored in bf16 by every variant, so its differences are bf16 roundings, ~4e-3 relative)")
    if args.no_compile or device.type != "cuda":
        return
    # last: if its compile is killed at a time limit, the table above has been printed already
    results["compiled"] = attempt("compiled", torch.compile(plain))
    print("\nwith the torch.compile row:")
    report(results)


if __name__ == "__main__":
    main()
