"""Benchmark: rollout generation tokens/s, `engine.generate` vs `transformers` `generate` (and references).

Run:  python benchmarks/bench_generate.py [--preset small] [--batch 64] [--prompt-len 64] [--new-tokens 128]
                                         [--device auto|cpu|cuda] [--compile auto|on|off] [--threads N]
                                         [--naive-tokens 8] [--hf-static]

Both sides: the same model shape, random init (float32 weights; bf16 weights with `--bf16`), the same
batch of random prompts (all of `--prompt-len` tokens, so no padding), plain sampling at temperature 1
(no top-k, no top-p), and no EOS stopping: `engine.generate` gets `sync_every=0` and an EOS id it
never checks, `transformers` gets `eos_token_id=None` and `min_new_tokens = max_new_tokens`; so both
produce exactly batch x new-tokens tokens. tokens/s = batch * new_tokens / seconds of the whole call
(prefill included: it is part of a rollout). The eager rows go first: each runs once untimed (warm-up),
then they run in interleaved rounds, each keeps its best round, and their table is printed; only then
are the compiled rows warmed up (the compilation) and timed the same way, and the whole table printed
again. So a run killed during a long compile keeps the eager table. A row that raises is reported as
failed with the error's message.

Rows: `engine.generate` (eager; and with `compile=True`, CUDA graphs, on CUDA or with --compile on),
`engine.generate_kv_reference` (the same loop through `GPT.forward` + `KVCache`), `generate_naive` (no
cache, timed on `--naive-tokens` new tokens because it is quadratic; its tokens/s is for that shorter
run), `transformers` generate with its default dynamic cache, and with `--hf-static` also with
`cache_implementation="static"` compiled (Hugging Face's own fast path: on CUDA `generate` compiles the
decode step itself; on CPU, where it does not, the script wraps the model's forward in `torch.compile`).
The last eager row, "matmuls alone", is not a generator: it times only the Linear layers' and the LM head's
matmuls of the same prefill and decode steps, the part both sides must do, so its ratio to transformers is the
most any generator doing the same math in the same dtype could reach here.

Ratios: every row against transformers' default (eager, dynamic cache), and against transformers in the
same mode -- a compiled row against the static-cache compiled transformers row (`--hf-static`; "n/a"
without it), an eager row against the eager one. Before any timing, a greedy check prints whether the
engine and transformers produce the same tokens (min(16, --new-tokens) of them); on CUDA the script says
if inductor skipped CUDA graphs.

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
    longest = max(N, naive_n)
    if P + longest > cfg.block_size:  # checked here: generate would quietly stop at the context's end
        raise SystemExit(f"bench_generate: {P} prompt tokens + {longest} new tokens = {P + longest} do not fit "
                         f"the {args.preset} preset's context of {cfg.block_size} tokens; lower --prompt-len, "
                         f"--new-tokens or --naive-tokens")

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

    def matmul_floor():
        """The Linear layers' and the LM head's matmuls of the same prefill and decode steps, and nothing else (no
        attention, norms, GELU, embeddings, sampling or cache writes): a lower bound on the time of any generator
        that does this math in this dtype. The prefill runs every Linear on B*P rows and the LM head on the last
        position's B rows; each of the N - 1 decode steps runs them all on B rows."""
        linears = [m for block in ours.transformer.h for m in (block.attn.c_attn, block.attn.c_proj,
                                                                 block.mlp.c_fc, block.mlp.c_proj)]
        with torch.no_grad():
            for rows_, lm_rows, times in ((B * P, B, 1), (B, B, N - 1)):
                x = {n: torch.randn(rows_, n, device=device, dtype=dtype) for n in {m.in_features for m in linears}}
                for _ in range(times):
                    for m in linears:
                        m(x[m.in_features])  # (rows, out_features)
                    ours.lm_head(x[cfg.n_embd][:lm_rows])  # (lm_rows, V)
        return None  # no tokens: warm_up does not count them for this row

    # (name, mode, new tokens, run, compiled): the eager rows are measured first, the compiled ones after them
    rows = [("engine.generate", "eager", N, engine_row(generate, N, sync_every=0), False)]
    if compile_rows:
        rows.append(("engine.generate", "compile=True (CUDA graphs)" if cuda else "compile=True (inductor)", N,
                     engine_row(generate, N, sync_every=0, compile=True), True))
    rows.append(("engine.generate_kv_reference", "eager, GPT.forward + KVCache", N,
                 engine_row(generate_kv_reference, N, sync_every=0), False))
    if naive_n > 0:
        rows.append(("engine.generate_naive", f"eager, no cache, {naive_n} new tokens", naive_n,
                     engine_row(generate_naive, naive_n), False))
    rows.append(("transformers generate", "dynamic cache (default)", N, hf_row(hf), False))
    rows.append(("matmuls alone (a floor)", "the same Linear and LM-head matmuls, nothing else", N, matmul_floor, False))
    if args.hf_static:  # a second copy, so that nothing compiled leaks into the row above
        hf_static = copy.deepcopy(hf)
        if cuda:
            # On CUDA, `generate(..., cache_implementation="static")` compiles the decode step itself
            # (`mode="reduce-overhead"`, CUDA graphs) and runs the prefill eagerly. Wrapping `forward` in our
            # own torch.compile would also compile the prefill (where the static cache is created) and
            # the cache tensors would not be marked as static inputs, so CUDA graphs would be skipped.
            rows.append(("transformers generate", "static cache, generate's own compile (CUDA graphs)", N,
                         hf_row(hf_static, cache_implementation="static"), True))
        else:  # transformers does not auto-compile on CPU, so compile its forward here
            hf_static.forward = torch.compile(hf_static.forward, fullgraph=True)
            rows.append(("transformers generate", "static cache + torch.compile(forward)", N,
                         hf_row(hf_static, cache_implementation="static"), True))

    print(environment(device))
    print(f"config: preset {args.preset} (n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, "
          f"vocab={cfg.vocab_size}); batch {B}; prompt {P} tokens; {N} new tokens; {str(dtype)[6:]} weights; "
          f"sampling at temperature 1, no top-k/top-p, no EOS stop; best of {args.repeats} rounds after a warm-up")

    # a sanity check that the fast path is also right, before any timing: greedy tokens of the engine
    # equal transformers' (on at most 16 new tokens, as many as the timed rows generate if fewer)
    k, n_check = min(B, 4), min(16, N)
    ours_greedy = generate(ours, (prompt[:k], mask[:k]), n_check, eos_id=never, pad_id=0, temperature=0, sync_every=0)
    with torch.no_grad():
        hf_greedy = hf.generate(prompt[:k], attention_mask=mask[:k], do_sample=False, max_new_tokens=n_check,
                                min_new_tokens=n_check, eos_token_id=None, pad_token_id=0)[:, P:]
    print(f"greedy check: engine.generate and transformers give the same {n_check} tokens on {k} prompts: "
          f"{torch.equal(ours_greedy.response.cpu(), hf_greedy.cpu())}")

    def failure(e: Exception) -> str:
        lines = str(e).splitlines() or [""]
        return f"failed: {type(e).__name__}: {lines[0][:80]}"

    # each of our rows against transformers in the same mode: eager against its default (eager, dynamic cache),
    # compiled against its static cache compiled (a compiled row against eager transformers would flatter us)
    hf_eager = ("transformers generate", "dynamic cache (default)")
    hf_compiled = next(((name, mode) for name, mode, _, _, compiled in rows
                        if name == "transformers generate" and compiled), None)

    # One broken row (a compile backend missing, a wrong token count) is reported as failed; the others go on.
    first, failed, best = {}, {}, {}

    def warm_up(phase) -> None:  # each row once, untimed (the compilation for compiled rows); checks the token count
        for name, mode, n, run, _ in phase:
            t0 = time.perf_counter()
            try:
                out = run()
                sync(device)
                if out is None:  # the matmul floor makes no tokens
                    first[(name, mode)] = time.perf_counter() - t0
                    continue
                tokens = out.response.numel() if hasattr(out, "response") else out[:, P:].numel()
                if tokens != B * n:
                    raise RuntimeError(f"produced {tokens} tokens, expected {B * n}")
            except Exception as e:
                failed[(name, mode)] = failure(e)
                continue
            first[(name, mode)] = time.perf_counter() - t0

    def timed_rounds(phase) -> None:  # interleaved rounds; each row keeps its best
        for _ in range(args.repeats):
            for name, mode, _, run, _ in phase:
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

    def report(shown, title: str) -> None:
        table = []
        for name, mode, n, _, compiled in shown:
            key = (name, mode)
            same_mode = hf_compiled if compiled else hf_eager
            if key in failed:
                table.append([name, mode, failed[key], "", f"{first[key]:.1f}" if key in first else "", "", ""])
            elif key in best:
                s = best[key]
                ratios = [f"{best[ref] / N * n / s:.2f}x" if ref in best else "n/a" for ref in (hf_eager, same_mode)]
                table.append([name, mode, f"{B * n / s:,.0f}", f"{s:.2f}", f"{first[key]:.1f}", *ratios])
        print(f"\n{title}:")
        print_table(["generator", "mode", "tokens/s", "seconds", "first call s", "vs transformers (dynamic)",
                     "vs transformers (same mode)"], table)

    eager_rows = [row for row in rows if not row[4]]
    compiled_rows = [row for row in rows if row[4]]
    warm_up(eager_rows)
    timed_rounds(eager_rows)
    report(eager_rows, f"eager rows, best of {args.repeats} timed rounds"
           + (" (the compiled rows follow)" if compiled_rows else ""))
    if not compiled_rows:
        return
    warm_up(compiled_rows)
    if args.hf_static and cuda and not hasattr(hf_static, "_compiled_call"):
        print("note: transformers did not auto-compile the static-cache row (it ran eagerly)")
    if cuda:  # a row labelled "CUDA graphs" must really have run as one
        from torch._dynamo.utils import counters
        skips = counters["inductor"].get("cudagraph_skips", 0)
        if skips:
            print(f"note: inductor skipped CUDA graphs {skips} time(s): a compiled row ran without them")
    timed_rounds(compiled_rows)
    report(rows, f"all rows, best of {args.repeats} timed rounds (compiled rows timed after the eager ones)")


if __name__ == "__main__":
    main()
