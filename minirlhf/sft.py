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

InstructGPT (Ouyang et al. 2022, §3.5) trained SFT for 16 epochs and selected by reward-model score; we
train a fixed number of steps and report the validation loss.

Deliberate simplifications: padding rather than packing (sequences are short and packing would need
per-document attention masks); batches are drawn from a fresh seeded permutation each epoch.
"""

from __future__ import annotations

import os
import shutil

import torch

from minirlhf import checkpoint as ck
from minirlhf.common import (Stopwatch, autocast, config_key, file_digest, make_adamw, resolve_device, reusable,
                             setup_torch, write_json)
from minirlhf.config import SFTConfig, fill_from_preset, save_config, stage_dir
from minirlhf.data import read_sft
from minirlhf.losses import sft_loss
from minirlhf.pretrain import get_batch, lm_loss, load_tokens
from minirlhf.tokenizer import Tokenizer, render_conversation
from minirlhf.train_loop import micro_batch_size, train_loop

STAGE = "sft"


def world_file(cfg, name: str) -> str:
    return os.path.join(cfg.out_dir, cfg.preset, "world", name)


def stage_file(cfg, stage: str, name: str) -> str:
    """out/<preset>/<stage>/<name>, with a clear error if that stage has not run yet."""
    path = os.path.join(cfg.out_dir, cfg.preset, stage, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: run `minirlhf {stage} --preset {cfg.preset}` first "
                                f"(or `minirlhf pipeline --preset {cfg.preset}`)")
    return path


def stage_tokenizer(checkpoint: str, out: str) -> Tokenizer:
    """Load the tokenizer.json that sits next to `checkpoint` and copy it into the stage folder `out`."""
    src = os.path.join(os.path.dirname(checkpoint), "tokenizer.json")
    tok = Tokenizer.load(src)
    shutil.copyfile(src, os.path.join(out, "tokenizer.json"))
    return tok


def encode_conversations(tok: Tokenizer, conversations: list, max_len: int, truncate: bool, source: str):
    """Render conversations to (ids, loss_mask) lists of at most `max_len` tokens.

    A longer conversation is an error naming its record, unless `truncate` (then it is cut on the right
    and counted). Returns (examples, number truncated).
    """
    examples, n_truncated = [], 0
    for i, messages in enumerate(conversations):
        ids, mask = render_conversation(tok, messages)
        if len(ids) > max_len:
            if not truncate:
                raise ValueError(f"{source}: record {i + 1} renders to {len(ids)} tokens, more than the context "
                                 f"allows ({max_len}); shorten it or pass --truncate=true")
            ids, mask = ids[:max_len], mask[:max_len]
            n_truncated += 1
        if sum(mask[1:]) == 0:  # nothing left to learn from (only possible after truncation)
            raise ValueError(f"{source}: record {i + 1} has no assistant tokens inside the context")
        examples.append((ids, mask))
    return examples, n_truncated


@torch.no_grad()
def init_chat_embeddings(model, tok: Tokenizer) -> dict[str, str]:
    """Start the chat tokens from the forum's markers: <|user|> <- "Q:", <|assistant|> <- "\\nA:", <|end|> <- "\\n".

    Pretraining never shows the chat tokens (DESIGN §2), so their embeddings are still random when SFT
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
    fill_from_preset(cfg)
    out = stage_dir(cfg, STAGE)
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()
    init = cfg.init or stage_file(cfg, "pretrain", "model.pt")
    data = cfg.data or world_file(cfg, "sft.jsonl")
    eval_data = cfg.eval_data or world_file(cfg, "sft_eval.jsonl")
    key = config_key(cfg, {"init": file_digest(init), "data": file_digest(data), "eval": file_digest(eval_data)})
    if not cfg.resume and (summary := reusable(out, key, cfg.force)) is not None:
        print(f"[sft] reusing {out}/model.pt (same config and inputs; --force to retrain)")
        return summary

    # 1. data
    tok = stage_tokenizer(init, out)
    model, init_ckpt = ck.load_model(init, device, dropout=cfg.dropout)
    if cfg.init_chat_embeddings and init_ckpt.get("stage") == "pretrain":
        init_chat_embeddings(model, tok)
    max_len = model.config.block_size + 1  # inputs are ids[:-1]
    train, n_trunc = encode_conversations(tok, read_sft(data), max_len, cfg.truncate, data)
    val, n_trunc_val = encode_conversations(tok, read_sft(eval_data), max_len, cfg.truncate, eval_data)
    if n_trunc or n_trunc_val:
        print(f"[sft] truncated {n_trunc} training and {n_trunc_val} validation conversations to {max_len} tokens")
    save_config(cfg, os.path.join(out, "config.json"))
    print(f"[sft] {len(train)} demonstrations ({len(val)} held out), init {init}, device {device}")

    # 2-3. train
    if cfg.freeze_embeddings:
        freeze_embeddings_except(model, [tok.user_id, tok.assistant_id, tok.end_id])
    torch.manual_seed(cfg.seed)
    optimizer = make_adamw(model.optimizer_groups(cfg.weight_decay), cfg.lr, (cfg.beta1, cfg.beta2), device)
    train_model = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    micro = micro_batch_size(cfg)

    ptx_data = load_tokens(stage_file(cfg, "pretrain", "train.bin"), model.config.vocab_size) if cfg.ptx_coef > 0 else None
    ptx_micro = max(1, (cfg.ptx_batch_size or cfg.batch_size) * micro // cfg.batch_size)

    def batch_loss(step, part):
        idx = batch_indices(len(train), cfg.batch_size, step, cfg.seed)[part * micro:(part + 1) * micro]
        x, y, m = collate([train[i] for i in idx], tok.pad_id, device)
        loss, _ = sft_loss(train_model(x), y, m)
        if ptx_data is None:
            return loss, {}
        # the pretraining mix: random corpus windows, drawn from a generator seeded by (step, part) so a
        # resumed run sees the same windows
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1_009 + part)
        px, py = get_batch(ptx_data, ptx_micro, model.config.block_size, gen, device)
        ptx = lm_loss(train_model, px, py)
        return loss + cfg.ptx_coef * ptx, {"sft_loss": loss.detach(), "ptx_loss": ptx.detach()}

    def evaluate():
        return {"val_loss": sft_validation_loss(train_model, val, tok.pad_id, cfg.batch_size, device, cfg.dtype)}

    result = train_loop(STAGE, cfg, model, optimizer, out, batch_loss, evaluate, device, loss_name="sft_loss")
    if result["interrupted"]:
        return {"stage": STAGE, "steps": result["steps"], "interrupted": True}

    # 4. artifacts, and the SFT policy measured against the world's gold judge
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(model, STAGE, step=result["steps"]))
    summary = {"stage": STAGE, "key": key, "steps": result["steps"], "val_loss": round(result["last_eval"]["val_loss"], 4),
               "examples": len(train), "truncated": n_trunc + n_trunc_val, "train_seconds": round(result["seconds"], 2),
               "device": str(device)}
    summary.update(world_eval(model, tok, cfg, out))
    summary["seconds"] = round(watch.seconds(), 2)
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[sft] val loss {summary['val_loss']:.3f}, {summary['seconds']:.0f} s")
    return summary


def world_eval(model, tok, cfg, out: str, reference=None, reward_model=None) -> dict:
    """evaluate_policy on the world's prompts (when the world exists); samples go to samples.jsonl."""
    from minirlhf.data import write_jsonl
    from minirlhf.evaluate import evaluate_policy, forum_prompt_rows, load_judge

    world_dir = os.path.join(cfg.out_dir, cfg.preset, "world")
    if not os.path.exists(os.path.join(world_dir, "eval_prompts.jsonl")):
        return {}
    judge_fn = load_judge(getattr(cfg, "gold_judge", ""))  # --gold-judge: bring your own judge
    pretrain_dir = os.path.join(cfg.out_dir, cfg.preset, "pretrain")
    metrics, samples = evaluate_policy(model, tok, world_dir, reference, reward_model,
                                       pretrain_dir if os.path.exists(os.path.join(pretrain_dir, "val.bin")) else None,
                                       seed=cfg.seed, judge_fn=judge_fn)
    write_jsonl(os.path.join(out, "samples.jsonl"), samples)
    # the questions the base model was asked in the forum format, now in the chat format: same prompts
    forum_metrics, _ = evaluate_policy(model, tok, world_dir, seed=cfg.seed, rows=forum_prompt_rows(world_dir),
                                       judge_fn=judge_fn)
    metrics["forum_prompts_gold"] = forum_metrics["gold_all"]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
