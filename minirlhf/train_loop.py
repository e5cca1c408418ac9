"""The supervised training loop shared by pretraining, SFT, the reward model and the DPO family.

A stage builds its data, model and optimiser, then hands two functions to `train_loop`:

    def batch_loss(step, rows):  # rows: a slice of step `step`'s global batch -> (loss, {name: tensor} to log)
        x, y = global_batch(step); return lm_loss(ddp_model, x[rows], y[rows]), {}
    def evaluate():              # -> {name: float}, run every eval_interval steps and at the end (rank 0)
        return {"val_loss": ...}
    result = train_loop(STAGE, cfg, model, optimizer, out_dir, batch_loss, evaluate, device,
                        generators={"data": gen}, wrapped=ddp_model)

The loop, top to bottom, per optimiser step: set the learning rate (warm-up + cosine), accumulate this
process's micro-batches under autocast, clip the gradient norm, step. Every `log_interval` steps:
check every loss since the last check for NaN/inf (one host sync), then append a line to metrics.jsonl.
Every `eval_interval` steps: evaluate and write `ckpt.pt` (model, optimiser, step, RNG states and the
stage's data generators) so `--resume` continues exactly where it stopped (bit-identical on CPU).
On resume, metrics.jsonl keeps its rows up to the checkpoint's step (later ones, logged before a crash,
are logged again); a checkpoint already at max_steps is evaluated once, so the stage gets `last_eval`.

The global batch and the loss weighting (one process or N under torchrun; see distributed.py).
Every optimiser step trains on the same global batch of `batch_size` examples (rows 0..batch_size-1,
which the stage maps to examples from `step`): one process cuts it into `grad_accum` micro-batches;
with N processes rank r takes rows [r B/N, (r+1) B/N) and cuts them into ceil(grad_accum / N)
micro-batches. `batch_loss(step, rows)` returns the micro-batch's loss -- a MEAN over something in it --
and optionally a third value, its `weight`: the micro-batch's share of the global batch's loss. By
default the weight is its share of the global batch's examples, (rows.stop - rows.start) / batch_size,
which is exact for a loss that is a mean over examples (or over a fixed number of tokens per example,
as in pretraining). A loss that is a mean over a VARIABLE number of tokens per example (SFT) returns
its share of the global batch's tokens instead. Either way sum(weight * loss) over every micro-batch
of every process is the loss of the whole global batch, whatever the number of processes or
micro-batches, and that sum is what is differentiated (DDP averages gradients over the N processes,
so each process backpropagates N * weight * loss) and logged as `loss`. Other metrics are logged as
example-weighted means over the global batch (the micro-batches in which they are present), or with a
weight of their own when batch_loss returns them as (value, weight) pairs.
Validation (`evaluate`) and checkpoints run on rank 0 while the other ranks wait.

`cfg` needs the fields: max_steps, batch_size, grad_accum, lr, min_lr_ratio, warmup_steps, grad_clip,
log_interval, eval_interval, dtype, progress, max_minutes, stop_after, resume, seed.

Deliberate simplifications: a function, not a trainer class; one optimiser; the stage owns its data.
"""

from __future__ import annotations

import contextlib
import os

import torch
from tqdm import tqdm

from minirlhf import checkpoint as ck
from minirlhf import distributed as dist
from minirlhf.common import MetricsLog, Stopwatch, autocast, check_finite, check_resume, lr_at, run_record


def micro_batch_size(cfg) -> int:
    """Sequences per micro-batch: batch_size / grad_accum (which must divide it)."""
    if cfg.grad_accum < 1 or cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"--batch_size={cfg.batch_size} must be divisible by --grad_accum={cfg.grad_accum}")
    return cfg.batch_size // cfg.grad_accum


def _global_sums(history: list[dict]) -> tuple[list[str], torch.Tensor]:
    """The names and a (steps, names, [sum, weight]) float64 CPU table of `history`, summed over the ranks."""
    names = sorted(set().union(*(h.keys() for h in history)))
    if dist.is_distributed():  # a metric may be missing on some rank (e.g. no desirable KTO example there)
        names = sorted(set().union(*dist.all_gather_objects(names)))
    device = next((x.device for h in history for pair in h.values() for x in pair if isinstance(x, torch.Tensor)),
                  torch.device("cpu"))
    absent = torch.zeros(2, dtype=torch.float64, device=device)
    cells = [torch.stack([torch.as_tensor(x, dtype=torch.float64, device=device) for x in h[name]])
             if name in h else absent for h in history for name in names]
    table = torch.stack(cells).view(len(history), len(names), 2)  # (steps, names, [sum, weight])
    return names, dist.all_reduce_sum(table).cpu()  # one host sync per log interval


def global_step_means(history: list[dict]) -> dict[str, list]:
    """Per-step global values of the logged quantities -> {name: [tensor per step where present]}.

    history: one dict per step, name -> [sum of weight * value, sum of weight] over this rank's
    micro-batches. The sums are added up over the ranks (one all-reduce for the whole log interval).
    """
    names, table = _global_sums(history)
    return {name: [table[i, j, 0] / table[i, j, 1] for i in range(len(history)) if table[i, j, 1] > 0]
            for j, name in enumerate(names)}


def global_history(history: list[dict]) -> list[dict]:
    """`history` summed over the ranks, in its own format: what a checkpoint taken between two metrics rows
    keeps, so that after --resume rank 0 holds the whole batch's sums and the other ranks none (the next
    row's all-reduce then adds them up as if nothing had stopped). A collective: every rank calls it."""
    if not history or not dist.is_distributed():  # (every rank holds as many steps: all return here alike)
        return history
    names, table = _global_sums(history)
    return [{name: [table[i, j, 0], table[i, j, 1]] for j, name in enumerate(names) if table[i, j, 1] > 0}
            for i in range(len(history))]


def _accumulate(sums: dict, name: str, weighted_value, weight) -> None:
    s = sums.setdefault(name, [0.0, 0.0])
    s[0] = s[0] + weighted_value
    s[1] = s[1] + weight


def train_loop(stage: str, cfg, model, optimizer, out_dir: str, batch_loss, evaluate, device,
               generators: dict[str, torch.Generator] | None = None, loss_name: str = "loss",
               wrapped=None, inputs: dict[str, str] | None = None) -> dict:
    """Run optimiser steps up to cfg.max_steps; returns {"steps", "interrupted", "seconds", "last_eval",
    "trained_steps", "stopped_early" (cut short by --max_minutes)}.

    model: the module whose weights are checkpointed (batch_loss may call a compiled or wrapped copy).
    wrapped: the DDP-wrapped module that batch_loss calls (`distributed.data_parallel(model)`), so that
    gradients are all-reduced only on the last micro-batch of a step; None in one process.
    loss_name: what the NaN guard calls the total loss in its message ("lm_loss", "dpo_loss", ...);
    the loss terms that batch_loss returns among its metrics are checked first, so the message names
    the term that went bad.
    inputs: the stage's input digests (as given to `config_key`), recorded in ckpt.pt with the settings so
    that --resume refuses a checkpoint of another run (`common.check_resume`).

    A run without --resume first removes a ckpt.pt left in out_dir by an earlier run. At --stop_after=k
    the checkpoint also holds the steps since the last metrics row, and nothing is evaluated or logged
    that an uninterrupted run would not: a stopped and resumed run writes the same metrics rows.
    """
    generators = generators or {}
    world, main = dist.world_size(), dist.is_main()
    slices = dist.rank_slices(cfg.batch_size, cfg.grad_accum)  # this rank's micro-batches of the global batch
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    step = 0
    history: list[dict] = []  # per step: name -> [sum of weight * value, sum of weight] on this rank
    grad_norms: list[torch.Tensor] = []  # the same on every rank (computed after the all-reduce)
    if cfg.resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; run without --resume first")
        state = ck.load_checkpoint(ckpt_path)
        check_resume(ckpt_path, state.get("run"), cfg, inputs)
        if state["step"] > cfg.max_steps:
            raise ValueError(f"--resume: {ckpt_path} is at step {state['step']}, past --max_steps={cfg.max_steps}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for name, gen in generators.items():
            gen.set_state(state["generators"][name])
        ck.set_rng_state(state["rng"])
        step = state["step"]
        # a --stop_after between two rows: the steps since the last row, summed over the ranks, on rank 0 (and
        # back on the training device: the checkpoint was loaded to the CPU)
        on_device = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
        pending = state.get("history", [])
        history = ([{name: [on_device(x) for x in pair] for name, pair in h.items()} for h in pending] if main
                   else [{} for _ in pending])
        grad_norms = [on_device(g) for g in state.get("grad_norms", [])]
        dist.print0(f"[{stage}] resuming from step {step}")
    elif main and os.path.exists(ckpt_path):
        os.remove(ckpt_path)  # an earlier run's: a later --resume must not find it

    def save_ckpt(pending: list[dict]) -> None:  # pending: the steps not yet logged (global sums)
        ck.save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "step": step, "rng": ck.rng_state(), "run": run_record(cfg, inputs),
                                       "generators": {n: g.get_state() for n, g in generators.items()},
                                       "history": pending, "grad_norms": grad_norms})

    def nan_guard(values: dict) -> None:  # the NaN guard on the steps since the last check
        terms = {k: v for k, v in values.items() if k.endswith("loss") and k != "loss"}
        terms[loss_name] = values.get("loss", [])
        check_finite(terms, stage, first_unchecked + 1, ckpt_path if os.path.exists(ckpt_path) else "")

    log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"), resume_step=step if cfg.resume else None, enabled=main)
    if log.dropped:
        dist.print0(f"[{stage}] metrics.jsonl: removed {log.dropped} rows logged after the checkpoint (step {step})")
    first_unchecked = step - len(history)  # the NaN guard's first step of the rows not yet checked
    last_eval: dict = {}
    watch = Stopwatch()
    start_step = step
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (cfg.progress and main), desc=stage, ncols=100)
    model.train()
    if step >= cfg.max_steps:  # resumed from a finished run: nothing to train, but the stage needs last_eval
        if main:
            last_eval = evaluate()
            model.train()
        dist.barrier()
    while step < cfg.max_steps:
        # ---- one optimiser step: this rank's micro-batches of the global batch ----
        lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a group may ask for a fraction of the schedule
        if world > 1:  # dropout masks (if any): a stream of its own per rank and step, resumable
            torch.manual_seed((cfg.seed * 1_000_003 + step) * 1_009 + dist.rank())
        sums: dict[str, list] = {}
        for i, rows in enumerate(slices):
            share = (rows.stop - rows.start) / cfg.batch_size  # of the global batch's examples
            last_micro = i == len(slices) - 1
            with contextlib.nullcontext() if last_micro else dist.no_sync(wrapped):  # all-reduce once per step
                with autocast(device, cfg.dtype):
                    loss, metrics, *rest = batch_loss(step, rows)
                weight = rest[0] if rest else share
                (loss * (weight * world)).backward()
            # the loss: sum(weight * loss) over the global batch, divided by the examples' shares (sum = 1)
            _accumulate(sums, "loss", loss.detach().float() * weight, share)
            for name, value in metrics.items():  # a metric is a tensor, or (tensor, its own weight)
                value, w = value if isinstance(value, tuple) else (value, share)
                _accumulate(sums, name, value.detach().float() * w, w)
        if cfg.grad_clip > 0:
            grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(sums)
        step += 1
        bar.update(1)

        # ---- log, evaluate, checkpoint ----
        last = step == cfg.max_steps
        out_of_time = cfg.max_minutes > 0 and dist.any_rank(watch.seconds() > 60 * cfg.max_minutes)
        interrupted = step == cfg.stop_after  # as if stopped here: checkpoint, then return
        evaluate_now = step % cfg.eval_interval == 0 or last or out_of_time
        if step % cfg.log_interval == 0 or evaluate_now:
            values = global_step_means(history)  # every rank gets the same numbers: all take the same branch
            if grad_norms:
                values["grad_norm"] = grad_norms
            nan_guard(values)
            row = {"step": step, "lr": lr, **{k: torch.stack(v).mean().item() for k, v in values.items() if v},
                   "seconds": round(watch.seconds(), 2)}
            history, grad_norms, first_unchecked = [], [], step
            if evaluate_now:
                if main:  # validation and the checkpoint on rank 0; the others wait at the barrier
                    last_eval = evaluate()
                    model.train()
                    row.update(last_eval)
                    save_ckpt([])  # every step so far is in a row
                dist.barrier()
            log.log(row)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("loss", "val_loss")})
        if out_of_time:
            dist.print0(f"[{stage}] --max_minutes={cfg.max_minutes} reached at step {step} of {cfg.max_steps}: the "
                        "model is kept but not reused as finished (the same command trains again; --resume "
                        "--max_minutes=0 continues)")
            break
        if interrupted and not last:
            if not evaluate_now:  # a checkpoint between evaluations, with the steps not yet logged
                if history:  # the steps since the last row (none when this step was one): NaN-free first
                    nan_guard(global_step_means(history))
                pending = global_history(history)  # every rank takes part in the sum
                if main:
                    save_ckpt(pending)
                dist.barrier()
            bar.close()
            dist.print0(f"[{stage}] stopped after step {step} (--stop_after); continue with --resume")
            return {"steps": step, "interrupted": True, "seconds": watch.seconds(), "last_eval": last_eval,
                    "trained_steps": step - start_step}
    bar.close()
    return {"steps": step, "interrupted": False, "seconds": watch.seconds(), "last_eval": last_eval,
            "trained_steps": step - start_step, "stopped_early": step < cfg.max_steps}
