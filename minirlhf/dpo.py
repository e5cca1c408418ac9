"""Preference optimisation straight from pairs: DPO and its paired family (cDPO, IPO, SimPO, ORPO).

Run it:
    minirlhf dpo --preset tiny                    # DPO, beta 0.1, from SFT, on out/tiny/pairs/prefs.jsonl
    minirlhf dpo --preset tiny --loss=ipo --beta=0.5
    minirlhf dpo --preset tiny --loss=orpo        # ORPO folds SFT in: starts from the base model

What happens, top to bottom:
  1. read the pairs and render chosen and rejected as full conversations; the loss mask covers the
     assistant's tokens and its <|end|>, so a sequence log-prob is the SUM of those tokens' log-probs
     (DPO, cDPO, IPO) or their MEAN (SimPO, ORPO: length-normalised by design);
  2. precompute the reference model's log-probs ONCE for every pair (no grad), cache them next to the
     stage's artifacts under a key of (data, reference checkpoint), and free the reference model -- the
     training loop then holds one model, not two;
  3. train with the shared loop: chosen and rejected of a batch go through one forward pass (2B rows);
  4. write model.pt, metrics.jsonl and summary.json (with the evaluation harness's numbers: gold reward,
     KL to the SFT reference, refusals, ...).

Metrics (metrics.jsonl): rewards/chosen and rewards/rejected are the implicit rewards
beta * (log pi - log pi_ref) of DPO (Rafailov et al. 2023, eq. 5); rewards/margins their difference;
rewards/accuracies the share of pairs with chosen above rejected; logps/chosen and logps/rejected the
policy's sequence log-probs. Expect logps/chosen to FALL during DPO: the loss only asks that the
*difference* grows, and pushing the rejected response down also drags similar chosen ones down
(Rafailov et al. 2023, §5; widely observed since).

Deliberate simplifications: paired losses only here (KTO's unpaired data and its mismatched-pair KL
estimate are not wired into a stage yet -- `losses.kto_loss` is); one epoch-free step budget.
"""

from __future__ import annotations

import hashlib
import os

import torch

from minirlhf import checkpoint as ck
from minirlhf import losses as L
from minirlhf.common import (Stopwatch, config_key, file_digest, make_adamw, resolve_device, reusable, setup_torch,
                             write_json)
from minirlhf.config import DPOConfig, fill_from_preset, save_config, stage_dir
from minirlhf.ops import logprobs_from_logits, masked_sum
from minirlhf.reward import load_pairs
from minirlhf.sft import batch_indices, stage_file, stage_tokenizer, world_eval, world_file
from minirlhf.train_loop import micro_batch_size, train_loop

STAGE = "dpo"
LOSSES = ("dpo", "cdpo", "ipo", "simpo", "orpo")
NEEDS_REFERENCE = ("dpo", "cdpo", "ipo")


def pad_pairs(pairs: list[dict], pad_id: int, device):
    """Chosen rows then rejected rows, right-padded: ids (2B, T), loss mask (2B, T)."""
    seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    masks = [p["chosen_mask"] for p in pairs] + [p["rejected_mask"] for p in pairs]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.float32)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(m)] = torch.tensor(m, dtype=torch.float32)
    return ids.to(device), mask.to(device)


def sequence_logps(model, ids, mask):
    """Summed log-probs of the masked (assistant) tokens and their count: (B, T) -> (B,), (B,).

    Logits at position t predict token t+1, so token t's log-prob comes from logits[:, t-1].
    Right padding needs no attention mask: pads come after every real token.
    """
    logits = model(ids[:, :-1])  # (B, T-1, V)
    token_logps = logprobs_from_logits(logits, ids[:, 1:])  # (B, T-1)
    m = mask[:, 1:]  # the mask of the predicted token
    return masked_sum(token_logps, m, dim=1), m.sum(1)


@torch.no_grad()
def reference_logps(ref, pairs: list[dict], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Reference sequence log-probs for every pair: (N, 2) = [chosen, rejected]."""
    ref.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids, mask = pad_pairs(chunk, pad_id, device)
        logps, _ = sequence_logps(ref, ids, mask)  # (2b,)
        out.append(torch.stack([logps[:len(chunk)], logps[len(chunk):]], dim=1).float().cpu())
    return torch.cat(out)


def cached_reference_logps(cache_dir: str, key: str, ref_path: str, pairs, pad_id, batch_size, device):
    """Reference log-probs, computed once per (data, reference checkpoint) and cached as a file."""
    path = os.path.join(cache_dir, f"ref_logps_{key}.pt")
    if os.path.exists(path):
        return ck.load_checkpoint(path)["ref_logps"]
    ref, _ = ck.load_model(ref_path, device)
    logps = reference_logps(ref, pairs, pad_id, batch_size, device)
    del ref  # the reference model is not needed again during training
    ck.save_checkpoint(path, {"ref_logps": logps})
    return logps


def preference_loss(name: str, cfg, pc, pr, nc, nr, ref_c=None, ref_r=None):
    """Dispatch to the loss function of losses.py; pc/pr summed log-probs, nc/nr token counts."""
    if name == "dpo":
        return L.dpo_loss(pc, pr, ref_c, ref_r, cfg.beta)
    if name == "cdpo":
        return L.dpo_loss(pc, pr, ref_c, ref_r, cfg.beta, label_smoothing=cfg.label_smoothing)
    if name == "ipo":
        return L.ipo_loss(pc, pr, ref_c, ref_r, cfg.tau)
    if name == "simpo":
        return L.simpo_loss(pc / nc, pr / nr, cfg.simpo_beta, cfg.simpo_gamma)
    if name == "orpo":
        return L.orpo_loss(pc / nc, pr / nr, -(pc / nc), cfg.orpo_lambda)
    raise ValueError(f"--loss={name!r}: expected one of {', '.join(LOSSES)}")


def run(cfg: DPOConfig) -> dict:
    fill_from_preset(cfg)
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss={cfg.loss!r}: expected one of {', '.join(LOSSES)}")
    out = stage_dir(cfg, STAGE if cfg.loss == "dpo" else f"{STAGE}_{cfg.loss}")
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()
    init = cfg.init or stage_file(cfg, "pretrain" if cfg.loss == "orpo" else "sft", "model.pt")
    ref_path = cfg.reference or stage_file(cfg, "sft", "model.pt")
    prefs = cfg.prefs or stage_file(cfg, "pairs", "prefs.jsonl")
    eval_prefs = cfg.eval_prefs or world_file(cfg, "prefs_eval.jsonl")
    inputs = {n: file_digest(p) for n, p in (("init", init), ("ref", ref_path), ("prefs", prefs), ("eval", eval_prefs))}
    key = config_key(cfg, inputs)
    if not cfg.resume and (summary := reusable(out, key, cfg.force)) is not None:
        print(f"[{cfg.loss}] reusing {out}/model.pt (same config and inputs; --force to retrain)")
        return summary

    # 1. data
    tok = stage_tokenizer(ref_path, out)
    max_len = ck.load_checkpoint(init)["model_config"]["block_size"] + 1  # the forward pass reads ids[:, :-1]
    train, val, skipped = load_pairs(tok, prefs, eval_prefs, max_len, cfg.truncate, cfg.loss)
    save_config(cfg, os.path.join(out, "config.json"))

    # 2. reference log-probs, precomputed once (or computed on the fly with --precompute_ref=false)
    ref_train = ref_val = ref_model = None
    if cfg.loss in NEEDS_REFERENCE:
        if cfg.precompute_ref:
            data_key = hashlib.sha256(f"{inputs['prefs']}-{inputs['eval']}-{inputs['ref']}-{cfg.truncate}".encode()
                                      ).hexdigest()[:16]
            ref_train = cached_reference_logps(out, f"train_{data_key}", ref_path, train, tok.pad_id, cfg.batch_size, device)
            ref_val = cached_reference_logps(out, f"val_{data_key}", ref_path, val, tok.pad_id, cfg.batch_size, device)
        else:
            ref_model, _ = ck.load_model(ref_path, device)
            ref_model.eval().requires_grad_(False)
    model, _ = ck.load_model(init, device)  # loaded after the reference is gone: one model in memory at a time
    print(f"[{cfg.loss}] {len(train)} pairs ({len(val)} held out), init {init}, reference "
          f"{'precomputed' if ref_train is not None else ('model on the fly' if ref_model else 'not needed')}")

    def batch_terms(idx: list[int], source: list[dict], ref_logps):
        chunk = [source[i] for i in idx]
        ids, mask = pad_pairs(chunk, tok.pad_id, device)
        logps, counts = sequence_logps(model, ids, mask)  # (2b,), (2b,)
        b = len(chunk)
        pc, pr, nc, nr = logps[:b], logps[b:], counts[:b], counts[b:]
        ref_c = ref_r = None
        if ref_logps is not None:
            ref_c, ref_r = ref_logps[idx, 0].to(device), ref_logps[idx, 1].to(device)
        elif ref_model is not None:
            with torch.no_grad():
                ref_all, _ = sequence_logps(ref_model, ids, mask)
            ref_c, ref_r = ref_all[:b], ref_all[b:]
        loss, m = preference_loss(cfg.loss, cfg, pc, pr, nc, nr, ref_c, ref_r)
        metrics = {"logps/chosen": pc.detach().mean(), "logps/rejected": pr.detach().mean()}
        if "chosen_rewards" in m:
            metrics.update({"rewards/chosen": m["chosen_rewards"].mean(), "rewards/rejected": m["rejected_rewards"].mean(),
                            "rewards/margins": (m["chosen_rewards"] - m["rejected_rewards"]).mean(),
                            "rewards/accuracies": (m["chosen_rewards"] > m["rejected_rewards"]).float().mean()})
        return loss, metrics

    # 3. train
    torch.manual_seed(cfg.seed)
    optimizer = make_adamw(model.optimizer_groups(cfg.weight_decay), cfg.lr, (cfg.beta1, cfg.beta2), device)
    micro = micro_batch_size(cfg)

    def batch_loss(step, part):
        idx = batch_indices(len(train), cfg.batch_size, step, cfg.seed)[part * micro:(part + 1) * micro]
        return batch_terms(idx, train, ref_train)

    @torch.no_grad()
    def evaluate():
        model.eval()
        totals: dict[str, float] = {}
        n = 0
        for i in range(0, len(val), cfg.batch_size):
            idx = list(range(i, min(i + cfg.batch_size, len(val))))
            loss, metrics = batch_terms(idx, val, ref_val)
            for k, v in {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(idx)
            n += len(idx)
        return {k: v / n for k, v in totals.items()}

    result = train_loop(STAGE, cfg, model, optimizer, out, batch_loss, evaluate, device, loss_name=f"{cfg.loss}_loss")
    if result["interrupted"]:
        return {"stage": STAGE, "steps": result["steps"], "interrupted": True}

    # 4. artifacts, and the policy measured against the world (KL to the SFT reference)
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(model, STAGE, loss=cfg.loss, step=result["steps"]))
    reference, _ = ck.load_model(ref_path, device)
    summary = {"stage": STAGE, "loss": cfg.loss, "key": key, "steps": result["steps"],
               **{k: round(v, 4) for k, v in result["last_eval"].items()}, "dropped_pairs": skipped,
               "train_seconds": round(result["seconds"], 2), "device": str(device)}
    summary.update(world_eval(model, tok, cfg, out, reference=reference))
    summary["seconds"] = round(watch.seconds(), 2)
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[{cfg.loss}] gold {summary.get('gold')}, KL {summary.get('kl_k1')}; {summary['seconds']:.0f} s")
    return summary
