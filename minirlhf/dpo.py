"""Preference optimisation straight from preference data: DPO and its family (cDPO, IPO, KTO, SimPO, ORPO).

Run it:
    minirlhf dpo --preset tiny                    # DPO, beta 0.1, from SFT, on out/tiny/pairs/prefs.jsonl
    minirlhf dpo --preset tiny --loss=ipo --tau=0.5
    minirlhf dpo --preset tiny --loss=orpo        # ORPO folds SFT in: starts from the base model
    minirlhf dpo --preset tiny --loss=kto         # the same pairs, unpaired: chosen = desirable, rejected = not
    minirlhf dpo --preset tiny --loss=kto --kto_data=out/tiny/world/kto.jsonl   # {"prompt","completion","label"}
    minirlhf dpo --preset tiny --rpo_alpha=1 --run_name=dpo_rpo   # DPO + the chosen responses' NLL (RPO)

What happens, top to bottom:
  1. read the pairs and render chosen and rejected as full conversations; the loss mask covers the
     final assistant reply's tokens and its <|end|> (not the earlier assistant turns of a multi-turn
     prompt), so a sequence log-prob is the SUM of those tokens' log-probs (DPO, cDPO, IPO) or their
     MEAN (SimPO, ORPO: length-normalised by design);
  2. precompute the reference model's log-probs ONCE for every pair (no grad, under the same autocast as
     training, so that a policy equal to the reference has log-ratio 0), cache them next to the stage's
     artifacts under a key of (data, reference checkpoint, precision), and free the reference model -- the
     training loop then holds one model, not two;
  3. train with the shared loop: chosen and rejected of a batch go through one forward pass (2B rows);
  4. write model.pt, metrics.jsonl and summary.json (with the evaluation harness's numbers: gold reward,
     KL to the SFT reference, refusals, ...).

Metrics (metrics.jsonl): rewards/chosen and rewards/rejected are the implicit rewards
beta * (log pi - log pi_ref) of DPO (Rafailov et al. 2023, eq. 5); rewards/margins their difference;
rewards/accuracies the share of pairs with chosen above rejected; logps/chosen and logps/rejected the
policy's sequence log-probs. logps/chosen often FALLS during DPO, and that is not a bug (on tiny it
rises: rewards/chosen stays positive): the loss only asks that the *difference* grows, and pushing the
rejected response down also drags similar chosen ones down
(the gradient of Rafailov et al. 2023's eq. 7 only asks the difference to grow; studied by Pal et al.
2024, "Smaug", and Razin et al. 2024). The closing <|end|> is part of both responses, so it can fall too:
on tiny (seed 1337, the pipeline's pairs) DPO's EOS rate drops from SFT's 0.993 to 0.956. `--rpo_alpha=1`
adds the chosen responses' per-token NLL (Pang et al. 2024) and keeps it at 0.985 -- at a larger KL to
SFT (0.81 against 0.37: the NLL pulls towards the mostly templated chosen texts) and about the same gold
(0.185 against 0.175; SFT 0.225). nll/chosen is logged when it is on.

KTO (Ethayarajh et al. 2024) needs no pairs: each example is one (prompt, completion, desirable?)
triple. Its reference point z0 estimates KL(pi || pi_ref) from MISMATCHED pairs -- a prompt with another
example's completion. Here every example i is given one fixed partner sigma(i) when the data is loaded
(a seeded shuffle of the examples that fit the context, each paired with the next one in it), so the
reference log-probs of the mismatched pairs can be precomputed like the others; z0 is the batch mean over
its examples' mismatched pairs, computed without gradients (the paper detaches it), so a micro-batch needs
at least two examples. A mismatched pair longer than the context is cut to it (it only feeds z0; the
number cut is printed). KTO's logps/ and rewards/ metrics are means over the examples of that label.

Under torchrun every loss here is a mean over pairs (or examples), so N processes train on exactly the
gradient of one process with the same global batch -- except KTO, whose z0 is a mean over each
micro-batch: it matches one process only with the same micro-batches (--grad_accum=N there).

Deliberate simplifications: a fixed step budget (no epochs); KTO's mismatched partners are fixed once
instead of re-drawn every batch, and cut to the context when too long.
"""

from __future__ import annotations

import hashlib
import os
import random

import torch

from minirlhf import checkpoint as ck
from minirlhf import distributed as dist
from minirlhf import losses as L
from minirlhf.chat import render_reply
from minirlhf.common import (Stopwatch, autocast, begin_writing, check_same_tokenizer, config_key, file_digest,
                             make_adamw, resolve_device, reusable, same_tokenizer, setup_torch, write_json)
from minirlhf.config import DPOConfig, fill_from_preset, stage_dir
from minirlhf.data import DataError, read_kto, read_preferences_with_report
from minirlhf.ops import logprobs_from_logits, masked_sum
from minirlhf.reward import load_pairs, row_where
from minirlhf.sft import (batch_indices, eval_headline, init_chat_embeddings, stage_file, tokenizer_of, world_eval,
                          world_file)
from minirlhf.train_loop import micro_batch_size, train_loop

STAGE = "dpo"
LOSSES = ("dpo", "cdpo", "ipo", "kto", "simpo", "orpo")
NEEDS_REFERENCE = ("dpo", "cdpo", "ipo", "kto")
PAIR_KEYS = ("chosen", "rejected")  # the two sequences of a preference pair
KTO_KEYS = ("completion", "mismatched")  # a KTO example's own completion and its mismatched partner's


def pad_pairs(pairs: list[dict], pad_id: int, device, keys: tuple[str, str] = PAIR_KEYS):
    """All first sequences then all second ones (chosen then rejected), right-padded: ids (2B, T), mask (2B, T)."""
    a, b = keys
    seqs = [p[a] for p in pairs] + [p[b] for p in pairs]
    masks = [p[f"{a}_mask"] for p in pairs] + [p[f"{b}_mask"] for p in pairs]
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
def reference_logps(ref, pairs: list[dict], pad_id: int, batch_size: int, device,
                    keys: tuple[str, str] = PAIR_KEYS, dtype: str = "float32") -> torch.Tensor:
    """Reference sequence log-probs for every record: (N, 2) = [chosen, rejected] (or KTO's two keys).

    The forward passes run under `autocast(device, dtype)`, as the policy's do in training: the same
    weights then give the same log-probs (bf16 ones differ from fp32 ones by far more than rounding)."""
    ref.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids, mask = pad_pairs(chunk, pad_id, device, keys)
        with autocast(device, dtype):
            logps, _ = sequence_logps(ref, ids, mask)  # (2b,)
        out.append(torch.stack([logps[:len(chunk)], logps[len(chunk):]], dim=1).float().cpu())
    return torch.cat(out)


def cached_reference_logps(cache_dir: str, key: str, ref_path: str, pairs, pad_id, batch_size, device,
                           keys: tuple[str, str] = PAIR_KEYS, dtype: str = "float32"):
    """Reference log-probs, computed once per `key` (the caller's: data, reference checkpoint, precision)
    and cached as a file."""
    path = os.path.join(cache_dir, f"ref_logps_{key}.pt")
    if dist.is_main() and not os.path.exists(path):  # rank 0 computes and writes; the others read its file
        ref, _ = ck.load_model(ref_path, device)
        logps = reference_logps(ref, pairs, pad_id, batch_size, device, keys, dtype)
        del ref  # the reference model is not needed again during training
        ck.save_checkpoint(path, {"ref_logps": logps})
    dist.barrier()
    return ck.load_checkpoint(path)["ref_logps"]


def kto_rows_from_pairs(rows: list[dict]) -> list[dict]:
    """Preference pairs as unpaired KTO rows: the chosen response desirable, the rejected one not (both keep
    the pair's `line`, when it has one)."""
    out = []
    for r in rows:
        line = {"line": r["line"]} if "line" in r else {}
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True, "extra": {}, **line})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False, "extra": {}, **line})
    return out


def encode_kto(tok, rows: list[dict], max_len: int, truncate: bool, source: str, seed: int):
    """KTO rows -> records with the example's sequence, its mismatched partner's, and the label.

    First each example's own sequence is checked against the context: an over-long one is an error naming
    `{source}:{line}`, or (truncate) dropped and counted. Then, among the examples that remain, the partner
    of example i is (prompt_i, completion of the next example in a seeded shuffle): a completion written
    for another prompt, whose log-ratio estimates KL(pi || pi_ref) (Ethayarajh et al. 2024, §4.1). A
    mismatched sequence longer than the context is cut to `max_len` tokens (it only feeds the KL estimate;
    the number cut is printed).
    """
    kept, dropped = [], 0
    for i, row in enumerate(rows):
        seq, mask = render_reply(tok, row["prompt"], row["completion"])
        if len(seq) > max_len:
            if not truncate:
                kind = "desirable" if row["label"] else "undesirable"
                raise DataError(f"{row_where(source, row, i)}: the {kind} example renders to {len(seq)} tokens, "
                                f"more than the context ({max_len}); pass --truncate=true to drop such examples "
                                f"(they are counted)")
            dropped += 1
            continue
        kept.append((row, seq, mask))
    if len(kept) < 2:
        raise ValueError(f"{source}: KTO needs at least 2 examples that fit the context (the KL estimate pairs "
                         f"each with another), got {len(kept)} of {len(rows)}")
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    records, cut = [], 0
    for i, (row, seq, mask) in enumerate(kept):
        kl_seq, kl_mask = render_reply(tok, row["prompt"], kept[partner[i]][0]["completion"])
        if len(kl_seq) > max_len:
            kl_seq, kl_mask, cut = kl_seq[:max_len], kl_mask[:max_len], cut + 1
        records.append({"completion": seq, "completion_mask": mask, "mismatched": kl_seq,
                        "mismatched_mask": kl_mask, "label": bool(row["label"])})
    if cut:
        dist.print0(f"[kto] {source}: {cut} mismatched (prompt, other completion) pairs cut to the context "
                    f"({max_len} tokens) for the KL estimate")
    return records, dropped


def load_kto(tok, cfg, prefs: str, eval_prefs: str, max_len: int):
    """KTO training and validation records: from --kto_data, else the preference pairs unpaired.

    Pairs with identical responses are an error unless --truncate, which drops them; they, and the
    examples too long for the context (dropped under --truncate), are printed and returned as the count
    of what was skipped."""
    on_identical = "drop" if cfg.truncate else "error"
    identical = 0
    if cfg.kto_data:
        train_rows = read_kto(cfg.kto_data)
        source = cfg.kto_data
    else:
        pairs, report = read_preferences_with_report(prefs, on_identical=on_identical)
        train_rows, source, identical = kto_rows_from_pairs(pairs), prefs, report["dropped_identical"]
    pairs, report = read_preferences_with_report(eval_prefs, on_identical=on_identical)
    val_rows, identical = kto_rows_from_pairs(pairs), identical + report["dropped_identical"]
    train, dropped = encode_kto(tok, train_rows, max_len, cfg.truncate, source, cfg.seed)
    val, dropped_val = encode_kto(tok, val_rows, max_len, cfg.truncate, eval_prefs, cfg.seed)
    if dropped + dropped_val + identical:
        dist.print0(f"[kto] dropped {dropped + dropped_val} examples too long for the context and {identical} "
                    f"pairs with identical responses")
    n_good = sum(r["label"] for r in train)
    dist.print0(f"[kto] {n_good} desirable and {len(train) - n_good} undesirable examples from {source}")
    return train, val, dropped + dropped_val + identical


def preference_loss(name: str, cfg, pc, pr, nc, nr, ref_c=None, ref_r=None):
    """Dispatch to the loss function of losses.py; pc/pr summed log-probs, nc/nr token counts.

    With `cfg.rpo_alpha` > 0 (dpo, cdpo, ipo) the loss gains alpha times the chosen responses' mean per-token
    negative log-likelihood: the DPO + NLL objective of Pang et al. 2024 ("Iterative Reasoning Preference
    Optimization"; TRL calls it rpo_alpha). DPO alone may lower the chosen responses' probability along with
    the rejected ones' (see the module docstring), including their closing <|end|>; the NLL term holds them up.
    """
    if name in ("dpo", "cdpo", "ipo"):
        if name == "ipo":
            loss, m = L.ipo_loss(pc, pr, ref_c, ref_r, cfg.tau)
        else:
            loss, m = L.dpo_loss(pc, pr, ref_c, ref_r, cfg.beta,
                                 label_smoothing=cfg.label_smoothing if name == "cdpo" else 0.0)
        if cfg.rpo_alpha:
            nll = -(pc / nc).mean()  # per-token NLL of the chosen responses, mean over pairs
            loss = loss + cfg.rpo_alpha * nll
            m = {**m, "chosen_nll": nll.detach()}
        return loss, m
    if name == "simpo":
        return L.simpo_loss(pc / nc, pr / nr, cfg.simpo_beta, cfg.simpo_gamma)
    if name == "orpo":
        return L.orpo_loss(pc / nc, pr / nr, -(pc / nc), cfg.orpo_lambda)
    raise ValueError(f"--loss={name!r}: expected one of {', '.join(LOSSES)}")


def run(cfg: DPOConfig) -> dict:
    """`minirlhf dpo`: train a policy on preference data with `--loss` (dpo, cdpo, ipo, kto, simpo or orpo).

    Reads the initial policy (--init, default out/<preset>/sft/model.pt; pretrain/model.pt for ORPO, whose chat
    tokens then start as SFT starts them: `sft.init_chat_embeddings`), the reference
    (--reference, default the SFT model), the pairs (--prefs, default out/<preset>/pairs/prefs.jsonl), the validation
    pairs (--eval_prefs, default the world's prefs_eval.jsonl) and, for KTO, --kto_data if given. Writes under
    out/<preset>/dpo/ (dpo_<loss> for another loss, or --run_name) tokenizer.json, config.json, the cached reference
    log-probs (ref_logps_*.pt, when precomputed), metrics.jsonl and ckpt.pt (train_loop), samples.jsonl
    (`sft.world_eval`, which also scores with out/<preset>/reward/model.pt when it exists), model.pt and summary.json,
    and returns the summary: the last validation metrics, `dropped_pairs`, the evaluation harness's numbers (gold,
    KL to the reference, ...), times; on every rank under torchrun. A finished run with the same config, inputs and
    code is reused (not with --force or --resume); --stop_after before the end returns {"stage", "steps",
    "interrupted": True} without model.pt or summary. ValueError for an unknown --loss, a bad --rpo_alpha, or KTO micro-batches of fewer
    than 2 examples.
    """
    from minirlhf.evaluate import judge_inputs

    fill_from_preset(cfg)
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss={cfg.loss!r}: expected one of {', '.join(LOSSES)}")
    if cfg.rpo_alpha < 0 or (cfg.rpo_alpha and cfg.loss not in ("dpo", "cdpo", "ipo")):
        raise ValueError(f"--rpo_alpha={cfg.rpo_alpha}: must be >= 0, and is used with --loss=dpo, cdpo or ipo only "
                         f"(got --loss={cfg.loss}; ORPO has its own NLL term)")
    micro = micro_batch_size(cfg)  # checks that grad_accum divides batch_size; reference and validation passes use it
    smallest = min(r.stop - r.start for r in dist.rank_slices(cfg.batch_size, cfg.grad_accum))
    if cfg.loss == "kto" and smallest < 2:
        raise ValueError(f"--loss=kto needs at least 2 examples per micro-batch (batch_size / grad_accum"
                         f"{' / processes' if dist.is_distributed() else ''} = {smallest}): its KL reference "
                         "point is a mean over the batch")
    out = stage_dir(cfg, cfg.run_name or (STAGE if cfg.loss == "dpo" else f"{STAGE}_{cfg.loss}"))
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()
    init = cfg.init or stage_file(cfg, "pretrain" if cfg.loss == "orpo" else "sft", "model.pt")
    ref_path = cfg.reference or stage_file(cfg, "sft", "model.pt")
    eval_prefs = cfg.eval_prefs or world_file(cfg, "prefs_eval.jsonl", "--eval_prefs")
    sources = [("init", init), ("ref", ref_path), ("eval", eval_prefs)]
    if cfg.loss == "kto" and cfg.kto_data:  # KTO on its own data: the pairs file is neither read nor needed
        prefs = ""
        sources.append(("kto", cfg.kto_data))
    else:
        prefs = cfg.prefs or stage_file(cfg, "pairs", "prefs.jsonl")
        sources.append(("prefs", prefs))
    inputs = {**{n: file_digest(p) for n, p in sources}, **judge_inputs(cfg)}
    key = config_key(cfg, inputs, __name__)  # __name__: its code (and what it imports) is part of the key
    if (summary := reusable(out, key, cfg.force, resume=cfg.resume)) is not None:
        dist.print0(f"[{cfg.loss}] reusing {out}/model.pt (same config, inputs and code; --force to retrain)")
        return summary

    # 1. data
    tok = tokenizer_of(ref_path)
    check_same_tokenizer(ref_path, init, "--init")
    max_len = ck.load_checkpoint(init)["model_config"]["block_size"] + 1  # the forward pass reads ids[:, :-1]
    if cfg.loss == "kto":
        train, val, skipped = load_kto(tok, cfg, prefs, eval_prefs, max_len)
    else:
        train, val, skipped = load_pairs(tok, prefs, eval_prefs, max_len, cfg.truncate, cfg.loss)
    keys = KTO_KEYS if cfg.loss == "kto" else PAIR_KEYS
    begin_writing(out, cfg, tokenizer_from=ref_path)  # inputs read and checked: only now is `out` touched

    # 2. reference log-probs, precomputed once (or computed on the fly with --precompute_ref=false)
    ref_train = ref_val = ref_model = None
    if cfg.loss in NEEDS_REFERENCE:
        if cfg.precompute_ref:
            # the precision and the batch size are part of the key: bf16 and fp32 reference log-probs differ,
            # and so (in the last bits) do batches of different shapes
            data_key = hashlib.sha256(f"{sorted(inputs.items())}-{cfg.truncate}-{cfg.loss == 'kto'}-{cfg.seed}-"
                                      f"{cfg.dtype}-{device.type}-{micro}".encode()).hexdigest()[:16]
            ref_train = cached_reference_logps(out, f"train_{data_key}", ref_path, train, tok.pad_id, micro,
                                               device, keys, cfg.dtype)
            ref_val = cached_reference_logps(out, f"val_{data_key}", ref_path, val, tok.pad_id, micro,
                                             device, keys, cfg.dtype)
        else:
            ref_model, _ = ck.load_model(ref_path, device)
            ref_model.eval().requires_grad_(False)
    model, init_ckpt = ck.load_model(init, device)  # loaded after the reference is gone: one model in memory at a time
    if cfg.loss == "orpo" and init_ckpt.get("stage") == "pretrain":  # ORPO folds SFT in: chat tokens start as in SFT
        init_chat_embeddings(model, tok)
    ddp_model = dist.data_parallel(model)  # the model itself in one process; batch_loss runs through it
    dist.print0(f"[{cfg.loss}] {len(train)} {'examples' if cfg.loss == 'kto' else 'pairs'} ({len(val)} held out), "
          f"init {init}, reference "
          f"{'precomputed' if ref_train is not None else ('model on the fly' if ref_model else 'not needed')}")

    def kto_terms(idx: list[int], source: list[dict], ref_logps, net):
        """KTO on one batch: the examples with gradients, their mismatched partners without (z0 is detached)."""
        chunk = [source[i] for i in idx]
        ids, mask = pad_pairs(chunk, tok.pad_id, device, KTO_KEYS)
        b = len(chunk)
        logps, _ = sequence_logps(net, ids[:b], mask[:b])  # (b,)
        with torch.no_grad():
            kl_logps, _ = sequence_logps(model, ids[b:], mask[b:])  # (b,)
        if ref_logps is not None:
            ref_own, ref_kl = ref_logps[idx, 0].to(device), ref_logps[idx, 1].to(device)
        else:
            with torch.no_grad():
                ref_all, _ = sequence_logps(ref_model, ids, mask)
            ref_own, ref_kl = ref_all[:b], ref_all[b:]
        good = torch.tensor([r["label"] for r in chunk], device=device)  # (b,) desirable?
        loss, m = L.kto_loss(logps[good], logps[~good], kl_logps, ref_own[good], ref_own[~good], ref_kl, cfg.beta,
                             cfg.kto_desirable_weight, cfg.kto_undesirable_weight)
        metrics = {"kl": m["kl"]}
        # a side's metrics are means over that side's examples: logged only when it has some, each weighted
        # by their count, so that the logged value is the mean over the global batch's examples of that label
        for side, sel, rewards in (("chosen", good, m["chosen_rewards"]), ("rejected", ~good, m["rejected_rewards"])):
            n = int(sel.sum())
            if n:
                metrics[f"logps/{side}"] = (logps[sel].detach().mean(), n)
                metrics[f"rewards/{side}"] = (rewards.mean(), n)
        return loss, metrics

    def batch_terms(idx: list[int], source: list[dict], ref_logps, net):
        """(loss, metrics) on the records `idx`; `net` is the policy to run (DDP-wrapped in training).

        A metric is a tensor (a mean over the records) or (tensor, weight): a mean over `weight` of them."""
        if cfg.loss == "kto":
            return kto_terms(idx, source, ref_logps, net)
        chunk = [source[i] for i in idx]
        ids, mask = pad_pairs(chunk, tok.pad_id, device)
        logps, counts = sequence_logps(net, ids, mask)  # (2b,), (2b,)
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
        if "chosen_nll" in m:
            metrics["nll/chosen"] = m["chosen_nll"]
        if "chosen_rewards" in m:
            metrics.update({"rewards/chosen": m["chosen_rewards"].mean(), "rewards/rejected": m["rejected_rewards"].mean(),
                            "rewards/margins": (m["chosen_rewards"] - m["rejected_rewards"]).mean(),
                            "rewards/accuracies": (m["chosen_rewards"] > m["rejected_rewards"]).float().mean()})
        return loss, metrics

    # 3. train
    torch.manual_seed(cfg.seed)
    optimizer = make_adamw(model.optimizer_groups(cfg.weight_decay), cfg.lr, (cfg.beta1, cfg.beta2), device)

    def batch_loss(step, rows):  # a mean over pairs: each micro-batch weighs its share of the global batch's pairs
        idx = batch_indices(len(train), cfg.batch_size, step, cfg.seed)[rows]
        return batch_terms(idx, train, ref_train, ddp_model)

    @torch.no_grad()
    def evaluate():  # under the training autocast, as the precomputed reference log-probs were computed
        model.eval()
        totals: dict[str, list[float]] = {}  # name -> [sum of weight * value, sum of weight]
        for i in range(0, len(val), micro):
            idx = list(range(i, min(i + micro, len(val))))
            with autocast(device, cfg.dtype):
                loss, metrics = batch_terms(idx, val, ref_val, model)
            for k, v in {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}.items():
                v, w = v if isinstance(v, tuple) else (v, len(idx))  # (value, its own weight) or a batch mean
                t = totals.setdefault(k, [0.0, 0.0])
                t[0], t[1] = t[0] + float(v) * w, t[1] + w
        return {k: s / w for k, (s, w) in totals.items()}

    result = train_loop(STAGE, cfg, model, optimizer, out, batch_loss, evaluate, device, loss_name=f"{cfg.loss}_loss",
                        wrapped=ddp_model, inputs=inputs)
    if result["interrupted"]:
        return {"stage": STAGE, "steps": result["steps"], "interrupted": True}
    # 4. the policy measured against the world, KL to the SFT reference (every rank samples its share)
    optimizer = ref_model = None  # free them before the evaluation loads the reference again
    reference, _ = ck.load_model(ref_path, device)
    rm_path = os.path.join(cfg.out_dir, cfg.preset, "reward", "model.pt")  # the proxy column, when there is one
    if os.path.exists(rm_path) and not same_tokenizer(ref_path, rm_path):
        dist.print0(f"[{cfg.loss}] no proxy reward: {rm_path} reads another tokenizer than this policy")
        rm_path = ""
    reward_model = ck.load_scalar_model(rm_path, device)[0] if rm_path and os.path.exists(rm_path) else None
    evaluation = world_eval(model, tok, cfg, out, reference=reference, reward_model=reward_model)
    if not dist.is_main():
        return dist.share()  # rank 0 alone writes the artifacts; its summary comes back

    # 5. artifacts
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(model, STAGE, loss=cfg.loss, step=result["steps"]))
    summary = {"stage": STAGE, "loss": cfg.loss, "key": key, "steps": result["steps"],
               "stopped_early": result["stopped_early"],
               **{k: round(v, 4) for k, v in result["last_eval"].items()}, "dropped_pairs": skipped,
               "train_seconds": round(result["seconds"], 2), "device": str(device)}
    summary.update(evaluation)
    summary["seconds"] = round(watch.seconds(), 2)
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[{cfg.loss}] {eval_headline(summary)}; {summary['seconds']:.0f} s")
    return dist.share(summary)
