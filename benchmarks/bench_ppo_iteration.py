"""Benchmark: one PPO iteration on a real preset, with the static-cache generator vs the previous loop.

Run:  python benchmarks/bench_ppo_iteration.py [--preset tiny] [--out_dir out] [--iterations 6] [--threads N]
                                              [--device cpu|cuda]
      (needs out/<preset>/sft/ and out/<preset>/reward/: run `minirlhf pipeline` or lessons 00-03 first)

The same `ppo.train_ppo` loop (policy and reference from SFT, value model and score from the reward
model, the preset's batch sizes) runs `--iterations` iterations twice: once with `engine.generate` (the
static preallocated KV cache and capturable decode step, the default) and once with
`engine.generate_kv_reference` swapped in (the loop through `GPT.forward` and the growing `KVCache`,
which is what PPO used before). The table reports seconds per iteration and rollout tokens/s for each,
and their ratio. Both use the same seeds; their rollouts are identical token for token (the test suite
checks the two generators agree), so the difference is the generator's: the rollout tokens/s column is
the generator alone, the s / iteration ratio the whole iteration (scoring and optimising included).

Rows run in interleaved rounds (the order alternates) and each keeps its best round. The first run of
the process also pays for cold starts (allocator, kernels, caches); with `--rounds 1` that charges them
to the first row alone, so the script says so under the table (use at least 2).

Deliberate simplifications: the first iteration is included (no separate warm-up); no evaluation.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from minirlhf import engine, ppo
from minirlhf.chat import render_prompt
from minirlhf.checkpoint import load_model, load_scalar_model
from minirlhf.common import resolve_device
from minirlhf.config import PPOConfig, make_config
from minirlhf.data import read_prompts
from minirlhf.sample import tokenizer_for


def one_run(generator_fn, args) -> dict:
    base = os.path.join(args.out_dir, args.preset)
    tok = tokenizer_for(os.path.join(base, "sft", "model.pt"))
    device = resolve_device(args.device)
    policy, _ = load_model(os.path.join(base, "sft", "model.pt"), device)
    ref, _ = load_model(os.path.join(base, "sft", "model.pt"), device)
    rm, _ = load_scalar_model(os.path.join(base, "reward", "model.pt"), device)
    value, _ = load_scalar_model(os.path.join(base, "reward", "model.pt"), device)
    rm.eval().requires_grad_(False)
    prompts = [render_prompt(tok, p) for p in read_prompts(os.path.join(base, "world", "rl_prompts.jsonl"))]
    prompts = [p for p in prompts if len(p) + 8 <= policy.config.block_size]
    cfg = make_config(PPOConfig, overrides={"preset": args.preset, "iterations": args.iterations, "progress": False,
                                            "out_dir": args.out_dir, "device": args.device})
    from minirlhf.config import fill_from_preset
    fill_from_preset(cfg)
    cfg.iterations = args.iterations
    saved = engine.generate
    engine.generate = generator_fn  # the name engine.generate_sharded (what the PPO loop calls) looks up
    try:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            result = ppo.train_ppo(policy, ref, value, rm.score, prompts, tok, cfg, out)
            seconds = time.perf_counter() - t0
    finally:
        engine.generate = saved
    return {"s_per_iteration": seconds / args.iterations, "rollout_tokens_per_s": result["rollout_tokens_per_second"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out_dir", default="out")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (order alternates); best kept")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit("bench_ppo_iteration: --rounds must be at least 1 (2 or more for a fair comparison)")
    if args.threads:
        torch.set_num_threads(args.threads)
    fns = {"engine.generate (static cache, default)": engine.generate,
           "engine.generate_kv_reference (before)": engine.generate_kv_reference}
    rows: dict[str, dict] = {}
    for _ in range(args.rounds):  # interleaved rounds, each row keeps its best (load on the machine varies)
        for name, fn in reversed(list(fns.items())) if _ % 2 else fns.items():
            r = one_run(fn, args)
            if name not in rows or r["s_per_iteration"] < rows[name]["s_per_iteration"]:
                rows[name] = r
    before = rows["engine.generate_kv_reference (before)"]["s_per_iteration"]
    print(f"PPO iterations on the {args.preset} preset, {args.iterations} iterations each; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print("| generator | s / iteration | rollout tokens/s | speed-up vs before |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['s_per_iteration']:.2f} | {r['rollout_tokens_per_s']:.0f} | "
              f"{before / r['s_per_iteration']:.2f}x |")
    if args.rounds == 1:
        print(f"note: one round only, so the first row ({next(iter(fns))}) also paid for the process's cold start; "
              f"its time is pessimistic: use --rounds 2 or more to compare")


if __name__ == "__main__":
    main()
