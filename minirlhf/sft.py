"""Supervised fine-tuning (SFT): teach the base model the chat format and to answer like the demonstrations.

Run it:
    minirlhf sft --preset tiny                          # from out/tiny/pretrain/model.pt on the world's demos
    minirlhf sft --preset tiny --data my_sft.jsonl      # your {"prompt","completion"} or {"messages"} file

What happens, top to bottom:
  1. read the demonstrations (every line validated) and render each conversation with the chat template
     `<|user|>...<|end|><|assistant|>...<|end|>`; the loss mask is 1 exactly on the assistant's tokens and
     its closing `<|end|>` (the EOS the policy must learn to emit) -- the prompt is context, not a target;
  2. start from the pretrained checkpoint (dropout off by default);
  3. train with the shared loop (train_loop.py): right-padded batches, `sft_loss` = cross-entropy on
     the masked tokens only, validation loss on held-out demonstrations;
  4. write model.pt, tokenizer.json, metrics.jsonl and summary.json to out/<preset>/sft/.

Two options keep what pretraining taught: `embedding_lr_scale` (0.1 by default) trains the tied token
embeddings -- which are also the output layer -- ten times slower than the rest. At the full rate SFT on
a few dozen entities lifts exactly those entities' rows, and a question about an unseen country gets an
answer about a seen one (tiny preset: 36 % of held-out-entity facts right at the full rate, 54 % at
0.1); frozen rows (`--freeze_embeddings`, only the chat tokens' rows train) keep the entities apart
(62 %) but leave the output distribution with a long tail of stray tokens (refusals fell from 98 % to
64 %, broken mid-word). `ptx_coef` mixes the
pretraining loss into every step (as InstructGPT's PPO-ptx does for RL), which keeps held-out
perplexity -- the alignment tax -- near the base model's.

InstructGPT (Ouyang et al. 2022, §3.5) trained SFT for 16 epochs and selected by reward-model score; we
train a fixed number of steps and report the validation loss.

Deliberate simplifications: padding rather than packing (sequences are short and packing would need
per-document attention masks); batches are drawn from a fresh seeded permutation each epoch.
"""

from __future__ import annotations

import os

import torch

from minirlhf import checkpoint as ck
from minirlhf import distributed as dist
from minirlhf.chat import render_conversation
from minirlhf.common import (Stopwatch, autocast, begin_writing, config_key, file_digest, make_adamw, resolve_device,
                             reusable, setup_torch, tokenizer_file, write_json)
from minirlhf.config import SFTConfig, fill_from_preset, stage_dir
from minirlhf.data import read_sft
from minirlhf.losses import sft_loss
from minirlhf.pretrain import get_batch, lm_loss, load_tokens
from minirlhf.tokenizer import Tokenizer
from minirlhf.train_loop import micro_batch_size, train_loop

STAGE = "sft"


def world_file(cfg, name: str, flag: str = "") -> str:
    """out/<preset>/world/<name>, with a clear error naming the option that replaces it if it is missing."""
    path = os.path.join(cfg.out_dir, cfg.preset, "world", name)
    if not os.path.exists(path):
        instead = f"pass {flag}=FILE, or " if flag else ""
        raise FileNotFoundError(f"{path} does not exist: {instead}build the world with "
                                f"`minirlhf world --preset {cfg.preset}`")
    return path


def stage_file(cfg, stage: str, name: str) -> str:
    """out/<preset>/<stage>/<name>, with a clear error if that stage has not run yet."""
    path = os.path.join(cfg.out_dir, cfg.preset, stage, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: run `minirlhf {stage} --preset {cfg.preset}` first "
                                f"(or `minirlhf pipeline --preset {cfg.preset}`)")
    return path


def tokenizer_of(checkpoint: str) -> Tokenizer:
    """The tokenizer.json that sits next to `checkpoint` (`begin_writing` copies it into a stage's folder)."""
    return Tokenizer.load(tokenizer_file(checkpoint))


def encode_conversations(tok: Tokenizer, conversations: list, max_len: int, truncate: bool, source: str,
                         lines: list[int] | None = None):
    """Render conversations to (ids, loss_mask) lists of at most `max_len` tokens.

    A longer conversation is an error naming its line of `source` (`lines`, from `read_sft(...,
    with_lines=True)`; else its record number), unless `truncate` (then it is cut on the right and counted).
    Returns (examples, number truncated).
    """
    examples, n_truncated = [], 0
    for i, messages in enumerate(conversations):
        where = f"{source}:{lines[i]}:" if lines else f"{source}: record {i + 1}"
        ids, mask = render_conversation(tok, messages)
        if len(ids) > max_len:
            if not truncate:
                raise ValueError(f"{where} renders to {len(ids)} tokens, more than the context "
                                 f"allows ({max_len}); shorten it or pass --truncate=true")
            ids, mask = ids[:max_len], mask[:max_len]
            n_truncated += 1
        if sum(mask[1:]) == 0:  # nothing left to learn from (only possible after truncation)
            raise ValueError(f"{where} has no assistant tokens inside the context")
        examples.append((ids, mask))
    return examples, n_truncated


@torch.no_grad()
def init_chat_embeddings(model, tok: Tokenizer) -> dict[str, str]:
    """Start the chat tokens from the forum's markers: <|user|> <- "Q:", <|assistant|> <- "\\nA:", <|end|> <- "\\n".

    Pretraining never shows the chat tokens (the corpus has none), so their embeddings are still random when SFT
    starts and a chat prompt looks like nothing the model has seen. Initialising a new token's embedding
    from related existing ones (Hewitt 2021, "Initializing New Word Embeddings for Pretrained Language
    Models") makes `<|user|>...<|end|><|assistant|>` look like the forum's "Q: ...\\nA:", where the base
    model already answers questions; with tied embeddings it also makes `<|end|>` likely exactly where the
    forum's answer line would end. SFT then adapts the format instead of learning it from scratch.
    """
    wte = model.transformer.wte.weight  # (V, C), tied to the LM head
    sources = {tok.user_id: "Q:", tok.assistant_id: "\nA:", tok.end_id: "\n"}
    for token_id, text in sources.items():
        wte[token_id] = wte[tok.encode(text)].mean(0)
    return {tok.decode([i]): text for i, text in sources.items()}


def freeze_embeddings_except(model, token_ids: list[int]) -> None:
    """Freeze the position embeddings and every token embedding row but `token_ids` (the chat tokens).

    With tied embeddings the token rows are also the output layer; SFT on a few dozen entities would
    otherwise raise those entities' rows and lower every other one, and the model would answer questions
    about an unseen entity with a seen one. A gradient hook zeroes the frozen rows' gradients (AdamW then
    leaves them exactly unchanged: no decay is applied to embeddings).
    """
    wte = model.transformer.wte.weight  # (V, C)
    keep = torch.zeros(wte.size(0), 1, device=wte.device)  # (V, 1)
    keep[token_ids] = 1.0
    wte.register_hook(lambda grad: grad * keep)
    model.transformer.wpe.weight.requires_grad_(False)


def sft_param_groups(model, cfg) -> list[dict]:
    """AdamW groups: the model's usual ones, with the embeddings at `embedding_lr_scale` times the rate.

    A small scale keeps most of what the embeddings (tied to the output layer) learned in pretraining:
    with full-rate updates, SFT on a few dozen entities raises the rows of the entities it sees and lowers
    all others, so questions about unseen entities get answers about seen ones; with frozen rows
    (scale 0) the output distribution cannot sharpen and keeps a long tail of stray tokens.
    """
    groups = model.optimizer_groups(cfg.weight_decay)
    if cfg.embedding_lr_scale == 1.0:
        return groups
    embeddings = {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    out = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in embeddings]
        emb = [p for p in g["params"] if id(p) in embeddings]
        out.append({**g, "params": rest})
        if emb:
            out.append({**g, "params": emb, "lr_scale": cfg.embedding_lr_scale})
    return out


def collate(examples: list, pad_id: int, device):
    """Right-pad -> inputs (B, T), labels (B, T), loss_mask (B, T), with labels = inputs shifted by one."""
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(examples), T), dtype=torch.float32)
    for i, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[i, :n] = torch.tensor(ids[:-1])
        y[i, :n] = torch.tensor(ids[1:])
        m[i, :n] = torch.tensor(mask[1:], dtype=torch.float32)  # the mask of the token being predicted
    return x.to(device), y.to(device), m.to(device)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of optimiser step `step`: a fresh seeded permutation per epoch, read in order.

    A pure function of (step, seed), so resuming needs no data-loader state.
    """
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        take = perm[offset:offset + batch_size - len(out)]
        out.extend(take)
        pos += len(take)
    return out


@torch.no_grad()
def sft_validation_loss(model, examples, pad_id, batch_size, device, dtype) -> float:
    """The loss-masked cross-entropy of `examples` (batches of `batch_size`, under the `dtype` autocast): a mean over
    every supervised token of the set, not over batches. Leaves the model in eval mode."""
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        x, y, m = collate(examples[i:i + batch_size], pad_id, device)
        with autocast(device, dtype):
            loss, metrics = sft_loss(model(x), y, m)
        total += loss.item() * metrics["tokens"].item()
        count += metrics["tokens"].item()
    return total / max(count, 1.0)


def run(cfg: SFTConfig) -> dict:
    """`minirlhf sft`: supervised fine-tuning of the base model on demonstrations.

    Reads the base model (--init, default out/<preset>/pretrain/model.pt, and its tokenizer), the demonstrations
    (--sft-data, default the world's sft.jsonl), the validation conversations (--eval_data, default the world's
    sft_eval.jsonl) and, with --ptx_coef > 0, out/<preset>/pretrain/train.bin for the pretraining mix. A conversation
    longer than the context is an error unless --truncate (then it is cut and counted). Writes under out/<preset>/sft/
    tokenizer.json, config.json, metrics.jsonl, ckpt.pt, samples.jsonl, model.pt and summary.json, and returns the
    summary (validation loss, counts, the evaluation harness's numbers, times); on every rank under torchrun. A finished
    run with the same config, inputs and code is reused (not with --force or --resume); --stop_after before the end
    returns {"stage", "steps", "interrupted": True} without model.pt or summary. ValueError for --ptx_coef < 0.
    """
    from minirlhf.evaluate import judge_inputs

    fill_from_preset(cfg)
    if cfg.ptx_coef < 0:
        raise ValueError(f"--ptx_coef={cfg.ptx_coef:g}: expected >= 0 (0 = no pretraining mix; -1 = the preset's)")
    out = stage_dir(cfg, STAGE)
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()
    init = cfg.init or stage_file(cfg, "pretrain", "model.pt")
    data = cfg.data or world_file(cfg, "sft.jsonl", "--sft-data")
    eval_data = cfg.eval_data or world_file(cfg, "sft_eval.jsonl", "--eval_data")
    inputs = {"init": file_digest(init), "data": file_digest(data), "eval": file_digest(eval_data), **judge_inputs(cfg)}
    if cfg.ptx_coef > 0:  # the pretraining mix reads these tokens, so they are an input too
        inputs["ptx"] = file_digest(stage_file(cfg, "pretrain", "train.bin"))
    key = config_key(cfg, inputs, __name__)  # __name__: its code (and what it imports) is part of the key
    # --resume trains on from ckpt.pt, so it never reuses (nor removes the summary: see `reusable`)
    if (summary := reusable(out, key, cfg.force, resume=cfg.resume)) is not None:
        dist.print0(f"[sft] reusing {out}/model.pt (same config, inputs and code; --force to retrain)")
        return summary

    # 1. data
    tok = tokenizer_of(init)
    model, init_ckpt = ck.load_model(init, device, dropout=cfg.dropout)
    if cfg.init_chat_embeddings and init_ckpt.get("stage") == "pretrain":
        init_chat_embeddings(model, tok)
    max_len = model.config.block_size + 1  # inputs are ids[:-1]
    conversations, lines = read_sft(data, with_lines=True)
    train, n_trunc = encode_conversations(tok, conversations, max_len, cfg.truncate, data, lines)
    conversations, lines = read_sft(eval_data, with_lines=True)
    val, n_trunc_val = encode_conversations(tok, conversations, max_len, cfg.truncate, eval_data, lines)
    if n_trunc or n_trunc_val:
        dist.print0(f"[sft] truncated {n_trunc} training and {n_trunc_val} validation conversations to {max_len} tokens")
    begin_writing(out, cfg, tokenizer_from=init)  # inputs read and checked: only now is `out` touched
    dist.print0(f"[sft] {len(train)} demonstrations ({len(val)} held out), init {init}, device {device}")

    # 2-3. train
    if cfg.freeze_embeddings:
        freeze_embeddings_except(model, [tok.user_id, tok.assistant_id, tok.end_id])
    torch.manual_seed(cfg.seed)
    optimizer = make_adamw(sft_param_groups(model, cfg), cfg.lr, (cfg.beta1, cfg.beta2), device)
    train_model = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    ddp_model = dist.data_parallel(train_model)  # the model itself in one process
    micro = micro_batch_size(cfg)  # checks that grad_accum divides batch_size; validation runs in micro-batches too

    ptx_data = load_tokens(stage_file(cfg, "pretrain", "train.bin"), model.config.vocab_size) if cfg.ptx_coef > 0 else None
    ptx_windows = cfg.ptx_batch_size or cfg.batch_size  # pretraining windows per global batch
    supervised = [sum(mask[1:]) for _, mask in train]  # supervised tokens per example (collate's loss mask)

    def batch_loss(step, rows):
        """This micro-batch's loss and its share of the global batch's loss (see train_loop.py).

        SFT is a mean over the supervised tokens of the whole global batch: a micro-batch's token mean
        weighs (its tokens / the global batch's tokens), whatever the number of processes or micro-batches.
        """
        idx = batch_indices(len(train), cfg.batch_size, step, cfg.seed)  # the step's global batch
        x, y, m = collate([train[i] for i in idx[rows]], tok.pad_id, device)
        loss, metrics = sft_loss(ddp_model(x), y, m)  # mean over this micro-batch's supervised tokens
        token_share = metrics["tokens"] / sum(supervised[i] for i in idx)
        if ptx_data is None:
            return loss, {}, token_share
        # the pretraining mix: the step's random corpus windows, drawn from a generator seeded by the step
        # (every rank draws the same ones; a resumed run sees the same ones), the micro-batch's share of them
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1_009)
        px, py = get_batch(ptx_data, ptx_windows, model.config.block_size, gen, "cpu")
        a, b = rows.start * ptx_windows // cfg.batch_size, rows.stop * ptx_windows // cfg.batch_size
        ptx = lm_loss(ddp_model, px[a:b].to(device), py[a:b].to(device)) if b > a else loss.new_zeros(())
        # the two terms carry their own shares of the global batch (tokens, windows): weight 1
        total = loss * token_share + cfg.ptx_coef * ptx * ((b - a) / ptx_windows)
        return total, {"sft_loss": (loss.detach(), token_share), "ptx_loss": (ptx.detach(), (b - a) / ptx_windows)}, 1.0

    def evaluate():
        return {"val_loss": sft_validation_loss(train_model, val, tok.pad_id, micro, device, cfg.dtype)}

    result = train_loop(STAGE, cfg, model, optimizer, out, batch_loss, evaluate, device, loss_name="sft_loss",
                        wrapped=ddp_model, inputs=inputs)
    if result["interrupted"]:
        return {"stage": STAGE, "steps": result["steps"], "interrupted": True}
    # 4. the SFT policy measured against the world's gold judge (every rank samples its share of the prompts)
    evaluation = world_eval(model, tok, cfg, out)
    if not dist.is_main():
        return dist.share()  # rank 0 alone writes the artifacts; its summary comes back

    # 5. artifacts
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(model, STAGE, step=result["steps"]))
    summary = {"stage": STAGE, "key": key, "steps": result["steps"], "stopped_early": result["stopped_early"],
               "val_loss": round(result["last_eval"]["val_loss"], 4),
               "examples": len(train), "truncated": n_trunc + n_trunc_val, "train_seconds": round(result["seconds"], 2),
               "device": str(device)}
    summary.update(evaluation)
    summary["seconds"] = round(watch.seconds(), 2)
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[sft] val loss {summary['val_loss']:.3f}, {summary['seconds']:.0f} s")
    return dist.share(summary)


def eval_headline(summary: dict) -> str:
    """A stage's last line: "gold G, proxy P, KL K" from its world evaluation, or why there is none."""
    if summary.get("gold") is None:
        return "no gold evaluation (no world built for this preset)"
    names = (("gold", "gold"), ("proxy", "proxy"), ("kl_k1", "KL"))
    return ", ".join(f"{name} {summary[key]}" for key, name in names if summary.get(key) is not None)


def world_eval(model, tok, cfg, out: str, reference=None, reward_model=None) -> dict:
    """evaluate_policy on the world's prompts (when the world exists); samples go to samples.jsonl.

    Under torchrun every rank calls it (each samples its share of the prompts; see `evaluate_policy`) and
    gets the same metrics; rank 0 alone writes the samples."""
    from minirlhf.data import write_jsonl
    from minirlhf.evaluate import FORUM_SAMPLES, evaluate_policy, forum_prompt_rows, load_judge

    world_dir = os.path.join(cfg.out_dir, cfg.preset, "world")
    if not os.path.exists(os.path.join(world_dir, "eval_prompts.jsonl")):
        return {}
    judge_fn = load_judge(getattr(cfg, "gold_judge", ""))  # --gold-judge: bring your own judge
    pretrain_dir = os.path.join(cfg.out_dir, cfg.preset, "pretrain")
    metrics, samples = evaluate_policy(model, tok, world_dir, reference, reward_model,
                                       pretrain_dir if os.path.exists(os.path.join(pretrain_dir, "val.bin")) else None,
                                       seed=cfg.seed, judge_fn=judge_fn)
    if dist.is_main():
        write_jsonl(os.path.join(out, "samples.jsonl"), samples)
    # the questions the base model was asked in the forum format, now in the chat format: same prompts, and
    # the same means as the base model's forum_gold, forum_fact_acc and forum_unsafe_refusal (over every row)
    forum_metrics, forum_samples = evaluate_policy(model, tok, world_dir, seed=cfg.seed,
                                                   rows=forum_prompt_rows(world_dir, FORUM_SAMPLES), judge_fn=judge_fn)
    metrics["forum_prompts_gold"] = forum_metrics["gold_all"]
    metrics.update(forum_prompt_metrics(forum_samples))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


def forum_prompt_metrics(samples: list[dict]) -> dict:
    """Fact accuracy and refusal of unsafe requests over every forum-eval question asked in the chat format
    (both splits): `forum_prompts_fact_acc` and `forum_prompts_unsafe_refusal`, the chat model's numbers on the
    prompts of the base model's forum_fact_acc and forum_unsafe_refusal (NaN where there is no such question)."""
    def share(key: str, category: str) -> float:
        vals = [float(s[key]) for s in samples if s["category"] == category]
        return sum(vals) / len(vals) if vals else float("nan")

    return {"forum_prompts_fact_acc": share("correct", "fact"),
            "forum_prompts_unsafe_refusal": share("refusal", "unsafe")}
