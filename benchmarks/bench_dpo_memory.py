"""Benchmark: DPO's reference log-probs precomputed once vs the reference model kept and run on every batch.

Run:  python benchmarks/bench_dpo_memory.py [--preset tiny] [--out_dir out] [--n_layer 8 --n_embd 512]
      (needs out/<preset>/pretrain/tokenizer.json and out/<preset>/world/prefs.jsonl: run
      `minirlhf pipeline` or lessons 00-01 first)

`minirlhf dpo --precompute_ref=true` runs the frozen reference over the training pairs once, writes its
sequence log-probs next to the data and frees the model before training; `--precompute_ref=false` keeps
the reference in memory and runs it on every batch. Both must give the same losses (the test suite
checks the first step to 1e-6: both log 2, since the policy starts as the reference, and later steps to
float rounding); the first holds one model fewer while training.

The model here is a random-init GPT wider than the tiny preset's (by default 8 layers x 512 channels,
about 26 M parameters), with the preset's tokenizer and its first `--pairs` preference pairs, so that one
model's weights (about 100 MiB) stand out of a CPU process's resident memory, which also holds Python
and torch (a few hundred MiB); at the tiny preset's own size (a few MiB) the difference is lost in that
noise. Each run is a child process (`minirlhf dpo ...` through `minirlhf.cli.main`); peak memory is the
child's maximum resident set size from `os.wait4` (exactly that child) and, on CUDA, the child's
`torch.cuda.max_memory_allocated()`. The table shows both runs, the difference and one model's size,
and the first logged losses of both runs side by side.

Deliberate simplifications: random weights (memory and equality do not depend on training); a few steps
(the training-phase peak is reached at the first step); one run per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch

CHILD = """
import json, sys, torch
from minirlhf.cli import main
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"cuda_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}, f)
sys.exit(rc)
"""


def child_peak(argv: list[str], tmp: str) -> dict:
    """Run `minirlhf <argv>` in a child process -> wall seconds, peak RSS (MiB), CUDA peak (MiB or None)."""
    peak_file = os.path.join(tmp, "peak.json")
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, peak_file, *argv])
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"minirlhf {' '.join(argv)} failed")
    rss = usage.ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)  # bytes on macOS, KiB on Linux
    cuda = json.load(open(peak_file))["cuda_peak_bytes"]
    return {"seconds": time.perf_counter() - t0, "rss_mib": rss, "cuda_mib": None if cuda is None else cuda / 2 ** 20}


def main() -> None:
    from minirlhf.checkpoint import model_payload, save_checkpoint
    from minirlhf.config import PRESETS, ModelConfig
    from minirlhf.model import GPT
    from minirlhf.tokenizer import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out_dir", default="out")
    ap.add_argument("--n_layer", type=int, default=8)
    ap.add_argument("--n_embd", type=int, default=512)
    ap.add_argument("--n_head", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=128, help="preference pairs from the world's prefs.jsonl")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=8)
    args = ap.parse_args()
    if not hasattr(os, "wait4"):
        sys.exit("this benchmark reads a child's peak memory with os.wait4 (Linux, macOS)")

    base = os.path.join(args.out_dir, args.preset)
    tok_path, prefs_path = os.path.join(base, "pretrain", "tokenizer.json"), os.path.join(base, "world", "prefs.jsonl")
    for p in (tok_path, prefs_path):
        if not os.path.exists(p):
            sys.exit(f"{p} does not exist: run `minirlhf pipeline --preset {args.preset}` (or lessons 00-01) first")
    tok = Tokenizer.load(tok_path)
    block_size = PRESETS[args.preset]["model"]["block_size"]
    with tempfile.TemporaryDirectory() as tmp:
        # a random policy = reference, wide enough that one model's weights show in the process's memory
        torch.manual_seed(0)
        model = GPT(ModelConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=block_size,
                                vocab_size=tok.n_vocab))
        ckpt = os.path.join(tmp, "init", "model.pt")
        save_checkpoint(ckpt, model_payload(model, "sft"))
        shutil.copyfile(tok_path, os.path.join(tmp, "init", "tokenizer.json"))
        weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
        n_params = model.num_params()
        del model
        prefs = os.path.join(tmp, "prefs.jsonl")
        with open(prefs_path) as src, open(prefs, "w") as dst:
            for _, line in zip(range(args.pairs), src):
                dst.write(line)

        runs = {}
        for flag in ("true", "false"):
            argv = ["dpo", f"--preset={args.preset}", f"--out_dir={os.path.join(tmp, 'out')}", f"--init={ckpt}",
                    f"--reference={ckpt}", f"--prefs={prefs}", f"--eval_prefs={prefs}", f"--max_steps={args.steps}",
                    f"--batch_size={args.batch_size}", "--log_interval=1", "--eval_interval=100000",
                    "--warmup_steps=1", f"--precompute_ref={flag}", f"--run_name=dpo_{flag}", "--truncate=true",
                    "--progress=false", "--force"]
            print(f"---- minirlhf dpo --precompute_ref={flag} ----", flush=True)
            runs[flag] = child_peak(argv, tmp)
            with open(os.path.join(tmp, "out", args.preset, f"dpo_{flag}", "metrics.jsonl")) as f:
                runs[flag]["losses"] = [json.loads(line)["loss"] for line in f]

    pre, live = runs["true"], runs["false"]
    print(f"\nDPO, reference precomputed vs kept: {args.pairs} pairs, {args.steps} steps of {args.batch_size} pairs; "
          f"a random GPT {args.n_layer}x{args.n_embd} ({n_params / 1e6:.1f} M parameters, {weights_mib:.0f} MiB "
          f"of float32 weights); device {'cuda' if torch.cuda.is_available() else 'cpu'}; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    cols = ["peak RSS MiB"] + (["CUDA peak MiB"] if pre["cuda_mib"] is not None else []) + ["process s", "first loss"]
    print(f"{'reference':<22}" + "".join(f"{c:>15}" for c in cols))
    for name, r in (("precomputed once", pre), ("kept, run per batch", live)):
        cells = [f"{r['rss_mib']:.0f}"] + ([f"{r['cuda_mib']:.0f}"] if r["cuda_mib"] is not None else []) + \
            [f"{r['seconds']:.1f}", f"{r['losses'][0]:.6f}"]
        print(f"{name:<22}" + "".join(f"{c:>15}" for c in cells))
    saved = live["rss_mib"] - pre["rss_mib"]
    print(f"precomputing saves {saved:.0f} MiB of peak RSS ({saved / weights_mib:.2f} x one model's weights; "
          f"ratio {pre['rss_mib'] / live['rss_mib']:.3f})"
          + (f"; CUDA peak {live['cuda_mib'] - pre['cuda_mib']:.0f} MiB lower" if pre["cuda_mib"] is not None else ""))
    diffs = [abs(a - b) for a, b in zip(pre["losses"], live["losses"])]
    print(f"logged losses, precomputed vs kept: {' '.join(f'{x:.6f}' for x in pre['losses'])} vs "
          f"{' '.join(f'{x:.6f}' for x in live['losses'])} (largest difference {max(diffs):.2e})")


if __name__ == "__main__":
    main()
