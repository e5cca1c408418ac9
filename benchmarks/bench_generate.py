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
compilation for compiled rows), then rows run in interleaved rounds and each keeps its best round; the
table is printed after every round. A row that raises is reported as failed with the error's message.

Rows: `engine.generate` (eager; and with `compile=True`, CUDA graphs, on CUDA or with --compile on),
`engine.generate_kv_reference` (the same loop through `GPT.forward` + `KVCache`), `generate_naive` (no
cache, timed on `--naive-tokens` new tokens because it is quadratic; its tokens/s is for that shorter
run), `transformers` generate with its default dynamic cache, and with `--hf-static` also with
`cache_implementation="static"` compiled (Hugging Face's own fast path: on CUDA `generate` compiles the
decode step itself; on CPU, where it does not, the script wraps the model's forward in `torch.compile`).

Ratios: every row against transformers' default (eager, dynamic cache), and against transformers in the
same mode -- a compiled row against the static-cache compiled transformers row (`--hf-static`; "n/a"
without it), an eager row against the eager one. A greedy check prints whether the engine and
transformers produce the same tokens; on CUDA the script says if inductor skipped CUDA graphs.

Deliberate simplifications: random weights and prompts (speed does not depend on them, except that
no row may stop early, which is why EOS is off); one prompt length.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from bench_train import environment, hf_gpt2, model_config, print_table, sync

from minirlhf.hf import hf_state_from_gpt

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
    ours = GPT(cfg).eval()
    hf = hf_gpt2(cfg).eval()
    hf.load_state_dict(hf_state_from_gpt(ours), strict=False)  # the same weights: same work, and a greedy check
    ours, hf = ours.to(device=device, dtype=dtype), hf.to(device=device, dtype=dtype)
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
    if args.hf_static:  # a second copy, so that nothing compiled leaks into the row above
        hf_static = copy.deepcopy(hf)
        if cuda:
            # On CUDA, `generate(..., cache_implementation="static")` compiles the decode step itself
            # (`mode="reduce-overhead"`, CUDA graphs) and runs the prefill eagerly. Wrapping `forward` in our
            # own torch.compile would also compile the prefill (where the static cache is created) and
            # the cache tensors would not be marked as static inputs, so CUDA graphs would be skipped.
            rows.append(("transformers generate", "static cache, generate's own compile (CUDA graphs)", N,
                         hf_row(hf_static, cache_implementation="static")))
        else:  # transformers does not auto-compile on CPU, so compile its forward here
            hf_static.forward = torch.compile(hf_static.forward, fullgraph=True)
            rows.append(("transformers generate", "static cache + torch.compile(forward)", N,
                         hf_row(hf_static, cache_implementation="static")))

    print(environment(device))
    print(f"config: preset {args.preset} (n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, "
          f"vocab={cfg.vocab_size}); batch {B}; prompt {P} tokens; {N} new tokens; {str(dtype)[6:]} weights; "
          f"sampling at temperature 1, no top-k/top-p, no EOS stop; best of {args.repeats} rounds after a warm-up")

    def failure(e: Exception) -> str:
        lines = str(e).splitlines() or [""]
        return f"failed: {type(e).__name__}: {lines[0][:80]}"

    # One broken row (a compile backend missing, a wrong token count) is reported as failed; the others go on.
    first, failed, best = {}, {}, {}
    for name, mode, n, run in rows:  # warm-up (and compile) once, and check the token count
        t0 = time.perf_counter()
        try:
            out = run()
            sync(device)
            tokens = out.response.numel() if hasattr(out, "response") else out[:, P:].numel()
            if tokens != B * n:
                raise RuntimeError(f"produced {tokens} tokens, expected {B * n}")
        except Exception as e:
            failed[(name, mode)] = failure(e)
            continue
        first[(name, mode)] = time.perf_counter() - t0
    if args.hf_static and cuda and not hasattr(hf_static, "_compiled_call"):
        print("note: transformers did not auto-compile the static-cache row (it ran eagerly)")
    if cuda and compile_rows:  # a row labelled "CUDA graphs" must really have run as one
        from torch._dynamo.utils import counters
        skips = counters["inductor"].get("cudagraph_skips", 0)
        if skips:
            print(f"note: inductor skipped CUDA graphs {skips} time(s): a compiled row ran without them")

    # a sanity check that the fast path is also right: greedy tokens of the engine equal transformers'
    k = min(B, 4)
    ours_greedy = generate(ours, (prompt[:k], mask[:k]), 16, eos_id=never, pad_id=0, temperature=0, sync_every=0)
    with torch.no_grad():
        hf_greedy = hf.generate(prompt[:k], attention_mask=mask[:k], do_sample=False, max_new_tokens=16,
                                min_new_tokens=16, eos_token_id=None, pad_token_id=0)[:, P:]
    print(f"greedy check: engine.generate and transformers give the same 16 tokens on {k} prompts: "
          f"{torch.equal(ours_greedy.response.cpu(), hf_greedy.cpu())}")

    # each of our rows against transformers in the same mode: eager against its default (eager, dynamic cache),
    # compiled against its static cache compiled (a compiled row against eager transformers would flatter us)
    hf_eager = ("transformers generate", "dynamic cache (default)")
    hf_compiled = next(((name, mode) for name, mode, _, _ in rows if name == "transformers generate"
                        and mode.startswith("static")), None)

    def report(done: int) -> None:  # printed after every round, so a run killed by a time limit keeps its rows
        table = []
        for name, mode, n, _ in rows:
            key = (name, mode)
            same_mode = hf_compiled if "compile" in mode else hf_eager
            if key in failed:
                table.append([name, mode, failed[key], "", f"{first[key]:.1f}" if key in first else "", "", ""])
            elif key in best:
                s = best[key]
                ratios = [f"{best[ref] / N * n / s:.2f}x" if ref in best else "n/a" for ref in (hf_eager, same_mode)]
                table.append([name, mode, f"{B * n / s:,.0f}", f"{s:.2f}", f"{first[key]:.1f}", *ratios])
        print(f"\nafter {done} of {args.repeats} timed rounds:")
        print_table(["generator", "mode", "tokens/s", "seconds", "first call s", "vs transformers (dynamic)",
                     "vs transformers (same mode)"], table)

    for r in range(args.repeats):
        for name, mode, n, run in rows:
            if (name, mode) in failed:
                continue
            try:
                sync(device)
                t0 = time.perf_counter()
                run()
                sync(device)
            except Exception as e:
                failed[(name, mode)] = failure(e)
                continue
            best[(name, mode)] = min(best.get((name, mode), float("inf")), time.perf_counter() - t0)
        report(r + 1)
    if args.repeats < 1:
        report(0)

if __name__ == "__main__":
    main()
