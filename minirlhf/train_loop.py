"""The supervised training loop shared by pretraining, SFT, the reward model and the DPO family.

A stage builds its data, model and optimiser, then hands two functions to `train_loop`:

    def batch_loss(step, micro): # micro-batch `micro` of step `step` -> (scalar loss, {name: tensor} to log)
        x, y = next_batch(); return lm_loss(model, x, y), {}
    def evaluate():              # -> {name: float}, run every eval_interval steps and at the end
        return {"val_loss": ...}
    result = train_loop(STAGE, cfg, model, optimizer, out_dir, batch_loss, evaluate, generators={"data": gen})

The loop, top to bottom, per optimiser step: set the learning rate (warm-up + cosine), accumulate
`grad_accum` micro-batches under autocast, clip the gradient norm, step. Every `log_interval` steps:
check every loss since the last check for NaN/inf (one host sync), then append a line to metrics.jsonl.
Every `eval_interval` steps: evaluate and write `ckpt.pt` (model, optimiser, step, RNG states and the
stage's data generators) so `--resume` continues exactly where it stopped (bit-identical on CPU).

`cfg` needs the fields: max_steps, grad_accum, lr, min_lr_ratio, warmup_steps, grad_clip, log_interval,
eval_interval, dtype, progress, max_minutes, stop_after, resume.

Deliberate simplifications: a function, not a trainer class; one optimiser; the stage owns its data.
"""

from __future__ import annotations

import os

import torch
from tqdm import tqdm

from minirlhf import checkpoint as ck
from minirlhf.common import MetricsLog, Stopwatch, autocast, check_finite, lr_at


def micro_batch_size(cfg) -> int:
    """Sequences per micro-batch: batch_size / grad_accum (which must divide it)."""
    if cfg.grad_accum < 1 or cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"--batch_size={cfg.batch_size} must be divisible by --grad_accum={cfg.grad_accum}")
    return cfg.batch_size // cfg.grad_accum


def train_loop(stage: str, cfg, model, optimizer, out_dir: str, batch_loss, evaluate, device,
               generators: dict[str, torch.Generator] | None = None, loss_name: str = "loss") -> dict:
    """Run optimiser steps up to cfg.max_steps; returns {"steps", "interrupted", "seconds", "last_eval"}.

    model: the module whose weights are checkpointed (batch_loss may call a compiled or wrapped copy).
    loss_name: what the NaN guard calls the total loss in its message ("lm_loss", "dpo_loss", ...);
    the loss terms that batch_loss returns among its metrics are checked first, so the message names
    the term that went bad.
    """
    generators = generators or {}
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    step = 0
    if cfg.resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; run without --resume first")
        state = ck.load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for name, gen in generators.items():
            gen.set_state(state["generators"][name])
        ck.set_rng_state(state["rng"])
        step = state["step"]
        print(f"[{stage}] resuming from step {step}")

    def save_ckpt() -> None:
        ck.save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "step": step, "rng": ck.rng_state(),
                                       "generators": {n: g.get_state() for n, g in generators.items()}})

    log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"), resume=cfg.resume)
    history: dict[str, list] = {}
    first_unchecked = step
    last_eval: dict = {}
    watch = Stopwatch()
    start_step = step
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not cfg.progress, desc=stage, ncols=100)
    model.train()
    while step < cfg.max_steps:
        # ---- one optimiser step: grad_accum micro-batches ----
        lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            with autocast(device, cfg.dtype):
                loss, metrics = batch_loss(step, micro)
            (loss / cfg.grad_accum).backward()
            for name, value in {**metrics, "loss": loss}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() / cfg.grad_accum
        if cfg.grad_clip > 0:
            sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for name, value in sums.items():
            history.setdefault(name, []).append(value)
        step += 1
        bar.update(1)

        # ---- log, evaluate, checkpoint ----
        last = step == cfg.max_steps
        out_of_time = cfg.max_minutes > 0 and watch.seconds() > 60 * cfg.max_minutes
        interrupted = step == cfg.stop_after  # as if stopped here: checkpoint, then return
        evaluate_now = step % cfg.eval_interval == 0 or last or out_of_time or interrupted
        if step % cfg.log_interval == 0 or evaluate_now:
            terms = {k: v for k, v in history.items() if k.endswith("loss") and k != "loss"}
            terms[loss_name] = history.get("loss", [])
            check_finite(terms, stage, first_unchecked + 1, ckpt_path if os.path.exists(ckpt_path) else "")
            row = {"step": step, "lr": lr, **{k: torch.stack(v).mean().item() for k, v in history.items()},
                   "seconds": round(watch.seconds(), 2)}
            history, first_unchecked = {}, step
            if evaluate_now:
                last_eval = evaluate()
                model.train()
                row.update(last_eval)
                save_ckpt()
            log.log(row)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("loss", "val_loss")})
        if out_of_time:
            print(f"[{stage}] --max_minutes={cfg.max_minutes} reached at step {step}")
            break
        if interrupted and not last:
            bar.close()
            print(f"[{stage}] stopped after step {step} (--stop_after); continue with --resume")
            return {"steps": step, "interrupted": True, "seconds": watch.seconds(), "last_eval": last_eval,
                    "trained_steps": step - start_step}
    bar.close()
    return {"steps": step, "interrupted": False, "seconds": watch.seconds(), "last_eval": last_eval,
            "trained_steps": step - start_step}
