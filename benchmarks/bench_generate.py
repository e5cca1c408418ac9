"""Benchmark: rollout generation tokens/s, `engine.generate` vs `transformers` `generate` (and references).

Run:  python benchmarks/bench_generate.py [--preset small] [--batch 64] [--prompt-len 64] [--new-tokens 128]
                                         [--device auto|cpu|cuda] [--compile auto|on|off] [--threads N]
                                         [--naive-tokens 8] [--hf-static]

Both sides: the same model shape, random init (float32 weights; bf16 weights with `--bf16`), the same
batch of random prompts (all of `--prompt-len` tokens, so no padding), plain sampling at temperature 1
(no top-k, no top-p), and no EOS stopping: `engine.generate` gets `sync_every=0` and an EOS id it
never checks, `transformers` gets `eos_token_id=None` and `min_new_tokens = max_new_tokens`; so both
produce exactly batch x new-tokens tokens. tokens/s = batch * new_tokens / seconds of the whole call
(prefill included: it is part of a rollout). Every row runs once untimed first (warm-up, and the
compilation for compiled rows), then rows run in interleaved rounds and each keeps its best round.

Rows: `engine.generate` (eager; and with `compile=True`, CUDA graphs, on CUDA or with --compile on),
`engine.generate_kv_reference` (the same loop through `GPT.forward` + `KVCache`), `generate_naive` (no
cache, timed on `--naive-tokens` new tokens because it is quadratic; its tokens/s is for that shorter
run), `transformers` generate with its default dynamic cache, and with `--hf-static` also with
`cache_implementation="static"` and `torch.compile` (Hugging Face's own fast path).

Deliberate simplifications: random weights and prompts (speed does not depend on them, except that
no row may stop early, which is why EOS is off); one prompt length.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from bench_train import environment, hf_gpt2, model_config, print_table, sync

from minirlhf.common import resolve_device, setup_torch
from minirlhf.config import PRESETS
from minirlhf.engine import generate, generate_kv_reference, generate_naive
from minirlhf.model import GPT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--naive-tokens", type=int, default=0, help="new tokens for the naive row; 0 = 8 on CPU, "
                    "--new-tokens on CUDA; -1 = skip it")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="auto = also time generate(compile=True) on CUDA")
    ap.add_argument("--hf-static", action="store_true", help="also time transformers with a static cache + compile")
    ap.add_argument("--bf16", action="store_true", help="bf16 weights on both sides (default float32)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timed rounds; each row keeps its best")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    setup_torch(device)
    cuda = device.type == "cuda"
    cfg = model_config(args.preset)
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    naive_n = args.naive_tokens or (N if cuda else 8)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    compile_rows = args.compile == "on" or (args.compile == "auto" and cuda)

    torch.manual_seed(args.seed)
    ours = GPT(cfg).to(device=device, dtype=dtype).eval()
    hf = hf_gpt2(cfg).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(0, cfg.vocab_size, (B, P), generator=torch.Generator().manual_seed(args.seed)).to(device)
    mask = torch.ones(B, P, dtype=torch.long, device=device)  # (B, P) no padding
    never = cfg.vocab_size  # an EOS id no sample can equal (and sync_every=0 never checks it anyway)

    def gen():
        return torch.Generator(device=device).manual_seed(args.seed)

    def engine_row(fn, n, **kw):
        return lambda: fn(ours, (prompt, mask), n, eos_id=never, pad_id=0, temperature=1.0, top_k=0, top_p=1.0,
                          generator=gen(), **kw)

    def hf_row(model, **kw):
        def run():
            with torch.no_grad():
                return model.generate(prompt, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                   max_new_tokens=N, min_new_tokens=N, eos_token_id=None, pad_token_id=0, **kw)
        return run

    rows = [("engine.generate", "eager", N, engine_row(generate, N, sync_every=0))]
    if compile_rows:
        rows.append(("engine.generate", "compile=True (CUDA graphs)" if cuda else "compile=True (inductor)", N,
                     engine_row(generate, N, sync_every=0, compile=True)))
    rows.append(("engine.generate_kv_reference", "eager, GPT.forward + KVCache", N,
                 engine_row(generate_kv_reference, N, sync_every=0)))
    if naive_n > 0:
        rows.append(("engine.generate_naive", f"eager, no cache, {naive_n} new tokens", naive_n,
                     engine_row(generate_naive, naive_n)))
    rows.append(("transformers generate", "dynamic cache (default)", N, hf_row(hf)))
    if args.hf_static:  # a second copy, so that the compiled forward does not leak into the row above
        hf_static = copy.deepcopy(hf)
        hf_static.forward = torch.compile(hf_static.forward, mode="reduce-overhead" if cuda else None, fullgraph=True)
        rows.append(("transformers generate", "static cache + torch.compile", N,
                     hf_row(hf_static, cache_implementation="static")))

    print(environment(device))
    print(f"config: preset {args.preset} (n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, "
          f"vocab={cfg.vocab_size}); batch {B}; prompt {P} tokens; {N} new tokens; {str(dtype)[6:]} weights; "
          f"sampling at temperature 1, no top-k/top-p, no EOS stop; best of {args.repeats} rounds after a warm-up")
    counts, failed = {}, {}
    for name, mode, n, run in rows:  # warm-up (and compile) once, and check the token count
        t0 = time.perf_counter()
        try:
            out = run()
        except Exception as e:  # one broken row (e.g. a compile backend missing) must not lose the others
            failed[(name, mode)] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            continue
        sync(device)
        counts[(name, mode)] = (out.response.numel() if hasattr(out, "response") else out[:, P:].numel(),
                                time.perf_counter() - t0)
    rows = [r for r in rows if (r[0], r[1]) not in failed] + [(k[0], k[1], 0, None) for k in failed]
    best = {}
    for _ in range(args.repeats):
        for name, mode, n, run in rows:
            if run is None:
                continue
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            best[(name, mode)] = min(best.get((name, mode), float("inf")), time.perf_counter() - t0)
    hf_s = best[("transformers generate", "dynamic cache (default)")] / N  # seconds per new token (all rows)
    table = []
    for name, mode, n, run in rows:
        if run is None:
            table.append([name, mode, failed[(name, mode)], "", "", ""])
            continue
        s = best[(name, mode)]
        tokens, first = counts[(name, mode)]
        assert tokens == B * n, f"{name} ({mode}) produced {tokens} tokens, expected {B * n}"
        table.append([name, mode, f"{B * n / s:,.0f}", f"{s:.2f}", f"{first:.1f}", f"{hf_s * n / s:.2f}x"])
    print_table(["generator", "mode", "tokens/s", "seconds", "first call s", "vs transformers (dynamic)"], table)


if __name__ == "__main__":
    main()
