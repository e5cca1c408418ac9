"""Benchmark: training-step tokens/s, minirlhf GPT vs Hugging Face `transformers` GPT2LMHeadModel.

Run:  python benchmarks/bench_train.py [--preset small|gpt2|tiny] [--batch 8] [--block 256] [--steps 5]
                                      [--device auto|cpu|cuda] [--compile auto|on|off] [--threads N]

Both models get the same shape (n_layer, n_head, n_embd, vocab, block), the same random weights (ours,
copied into transformers' layout with `minirlhf.hf.hf_state_from_gpt`), dropout 0, the same batch of random
token ids, the same loss (cross-entropy of next tokens computed from the returned logits),
the same optimiser (AdamW, fused on CUDA), and the same precision (bf16 autocast on CUDA, float32 on
CPU). One training step = forward, loss, backward, clip the gradient norm to 1, AdamW step, zero grads.
Before any timing, the two models' first-step losses must agree (relative difference at most 1e-4 in
float32, 1e-3 under bf16 autocast), or the script stops: they would not be computing the same thing. (With
the same weights they agree to about 1e-5 on the micro and tiny shapes on the CPU, bf16 autocast included;
two independently initialised models differ by 2e-3 on micro. Near initialisation every loss is close to
ln(vocab), so this is a coarse check: it catches unequal weights or a gross difference, not a subtle one.)
tokens/s = batch * block * steps / seconds, timed after `--warmup` untimed steps, with a device sync
at each end of the timed interval and none inside; the two models run in interleaved rounds and each
keeps its best round (robust to other work on a shared machine). On CUDA each model is also timed under
`torch.compile` (`--compile auto`); the ratio column compares models in the same mode.

Deliberate simplifications: random tokens instead of text (speed does not depend on the data); one
run per row (repeat the script to see the spread); no gradient accumulation or DDP. Helpers here
(`hf_gpt2`, `environment`, `print_table`) are shared by the other benchmark scripts in this folder.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from minirlhf.common import autocast, make_adamw, resolve_device, setup_torch
from minirlhf.config import PRESETS, ModelConfig
from minirlhf.hf import hf_state_from_gpt
from minirlhf.model import GPT


def model_config(preset: str, block: int | None = None) -> ModelConfig:
    shape = dict(PRESETS[preset]["model"])
    if block:
        shape["block_size"] = block
    return ModelConfig(**shape, dropout=0.0)


def hf_gpt2(cfg: ModelConfig):
    """A randomly initialised transformers GPT2LMHeadModel with the same shape (SDPA attention, no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hc = GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_positions=cfg.block_size,
                    vocab_size=cfg.vocab_size, activation_function="gelu_new", resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hc._attn_implementation = "sdpa"
    return GPT2LMHeadModel(hc)


def environment(device: torch.device) -> str:
    try:
        import transformers
        tv = transformers.__version__
    except ImportError:
        tv = "not installed"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return f"device: {where}; torch {torch.__version__}; transformers {tv}; Python {platform.python_version()}"


def print_table(header: list[str], rows: list[list]) -> None:
    """A Markdown table (pastes straight into RESULTS.md)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def logits_of(model, x):
    """(B, T) -> (B, T, V) logits of either model; transformers' without building a KV cache (a training
    step has no use for one) and, with no pad id in its config, without its per-call padding check."""
    if isinstance(getattr(model, "_orig_mod", model), GPT):  # ours, compiled or not
        return model(x)
    return model(x, use_cache=False).logits  # transformers returns a ModelOutput


def training_step(model, x, y, device, dtype: str):
    """A function running one full training step of `model` on (x, y) and returning the loss (a tensor:
    no host sync inside)."""
    model.train()
    opt = make_adamw([p for p in model.parameters() if p.requires_grad], 3e-4, (0.9, 0.95), device)

    def step():
        with autocast(device, dtype):
            logits = logits_of(model, x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def seconds_per_step(step, steps: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=0, help="sequences per step; 0 = 8 on CPU, 32 (16 for gpt2) on CUDA")
    ap.add_argument("--block", type=int, default=0, help="tokens per sequence; 0 = the preset's context")
    ap.add_argument("--steps", type=int, default=0, help="timed steps; 0 = 4 on CPU, 20 on CUDA")
    ap.add_argument("--warmup", type=int, default=-1, help="untimed steps first (at least 1: the first one checks "
                    "that both models give the same loss); -1 = 1 on CPU, 5 on CUDA")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto = bf16 autocast on CUDA, float32 on CPU")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="auto = also time torch.compile on CUDA")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of `steps` steps; the best counts")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    setup_torch(device)  # TF32 on CUDA
    cuda = device.type == "cuda"
    cfg = model_config(args.preset, args.block or None)
    B = args.batch or (8 if not cuda else (16 if args.preset == "gpt2" else 32))
    T = cfg.block_size
    steps = args.steps or (20 if cuda else 4)
    warmup = max(1, args.warmup if args.warmup >= 0 else (5 if cuda else 1))
    modes = [False] + ([True] if (args.compile == "on" or (args.compile == "auto" and cuda)) else [])

    g = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g).to(device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()  # (B, T) inputs and next-token targets

    print(environment(device))
    precision = "bf16 autocast" if (cuda and args.dtype == "auto") or args.dtype == "bfloat16" else "float32"
    rtol = 1e-3 if precision == "bf16 autocast" else 1e-4  # allowed relative difference of the first-step losses
    print(f"config: preset {args.preset} (n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}, "
          f"vocab={cfg.vocab_size}, block={T}); batch {B}; {precision}; AdamW (fused={cuda}); "
          f"best of {args.repeats} interleaved rounds of {steps} steps, after {warmup} warm-up steps")
    header = ["model", "mode", "tokens/s", "ms/step", "vs transformers (same mode)"]
    for compiled in modes:  # one table per mode, printed as soon as it is measured
        torch.manual_seed(args.seed)
        ours, hf = GPT(cfg), hf_gpt2(cfg)
        hf.load_state_dict(hf_state_from_gpt(ours), strict=False)  # the same weights (lm_head: tied to wte)
        steps_fn, first_loss = {}, {}
        for name, model in (("minirlhf", ours.to(device)), ("transformers", hf.to(device))):
            steps_fn[name] = training_step(torch.compile(model) if compiled else model, x, y, device, args.dtype)
            first_loss[name] = steps_fn[name]().item()  # the first warm-up step
            for _ in range(warmup - 1):
                steps_fn[name]()
        del ours, hf, model
        a, b = first_loss["minirlhf"], first_loss["transformers"]
        if not abs(a - b) <= rtol * abs(b):  # (a NaN fails too)
            raise SystemExit(f"bench_train: the first-step losses differ ({a:.6f} minirlhf vs {b:.6f} transformers, "
                             f"{'torch.compile' if compiled else 'eager'}; allowed relative difference {rtol:g}): "
                             f"the two models do not compute the same thing, so nothing is timed")
        print(f"first-step loss, same weights and batch: {a:.6f} minirlhf, {b:.6f} transformers "
              f"({'torch.compile' if compiled else 'eager'}; agree within {rtol:g} relative)")
        # interleave the two models `repeats` times and keep each one's best round: other work on the
        # machine slows some rounds down, and the best round is the least disturbed one
        best = {name: float("inf") for name in steps_fn}
        for _ in range(args.repeats):
            for name, step in steps_fn.items():
                best[name] = min(best[name], seconds_per_step(step, steps, device))
        del steps_fn
        if cuda:
            torch.cuda.empty_cache()
        mode = "torch.compile" if compiled else "eager"
        rows = []
        for name, label in (("minirlhf", "minirlhf GPT"), ("transformers", "transformers GPT2LMHeadModel")):
            s = best[name]
            rows.append([label, mode, f"{B * T / s:,.0f}", f"{1e3 * s:.1f}", f"{best['transformers'] / s:.2f}x"])
        print_table(header, rows)
        print(flush=True)


if __name__ == "__main__":
    main()
