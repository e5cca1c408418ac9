"""Pretraining: train the BPE tokenizer (if there is none yet) and a GPT on a plain-text corpus.

Run it:
    minirlhf pretrain --preset tiny                 # on the TinyWorld corpus (built first if missing)
    minirlhf pretrain --preset tiny --corpus my.txt # your own .txt (docs split by <|endoftext|>) or .jsonl {"text"}
    minirlhf pretrain --preset tiny --resume        # continue an interrupted run, bit-identically on CPU
    python -c "from minirlhf.pretrain import run; from minirlhf.config import *; run(make_config(PretrainConfig, 'micro'))"

What happens, top to bottom:
  1. read the corpus (one clear error per malformed line), split documents into train / validation;
  2. train the tokenizer on the training documents, or reuse `out/<preset>/tokenizer/tokenizer.json`;
  3. tokenise once into `train.bin` / `val.bin` (uint16 memmaps, uint32 past 65535 tokens);
  4. train: random windows of `block_size + 1` tokens, AdamW (fused on CUDA), warm-up + cosine schedule,
     gradient clipping, bf16 autocast on CUDA, optional `torch.compile`, a NaN/inf guard;
  5. every `eval_interval` steps: validation loss and an atomic checkpoint (`ckpt.pt`: model, optimiser,
     step, RNG states, data generator) that `--resume` restores exactly;
  6. write `model.pt`, `metrics.jsonl`, `summary.json` (validation loss vs the unigram entropy of the
     tokens, tokens/s, wall time).

Deliberate simplifications: windows may cross document boundaries (the `<|endoftext|>` token marks them,
as in GPT-2); validation uses a fixed set of random windows so that the curve is comparable across evals.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from minirlhf import checkpoint as ck
from minirlhf import distributed as dist
from minirlhf.common import (Stopwatch, autocast, begin_writing, check_resume, config_key, file_digest, make_adamw,
                             resolve_device, reusable, setup_torch, write_json)
from minirlhf.config import PretrainConfig, WorldConfig, model_config_from, stage_dir
from minirlhf.data import read_corpus
from minirlhf.model import GPT
from minirlhf.tokenizer import Tokenizer
from minirlhf.train_loop import micro_batch_size, train_loop

STAGE = "pretrain"


# ----------------------------------------------------------------------------------------------------
# corpus, tokenizer, token files


def corpus_path(cfg) -> str:
    """The user's --corpus, or the TinyWorld corpus for this preset (built if missing)."""
    if cfg.corpus:
        return cfg.corpus
    path = os.path.join(cfg.out_dir, cfg.preset, "world", "corpus.txt")
    if not os.path.exists(path):
        from minirlhf.world.build import run as build_world

        build_world(WorldConfig(preset=cfg.preset, seed=cfg.seed, out_dir=cfg.out_dir))
    return path


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str], int]:
    """A seeded split of whole documents into train and validation. A validation document whose exact text
    is also a training document is left out of validation (the corpus repeats some documents word for word;
    about 15 % of tiny's validation documents were such copies, and text the model trained on is not
    held-out text). The training documents are the seeded split's, whatever the duplicates, and never none.
    Returns (train documents, validation documents, how many validation documents were left out)."""
    if len(docs) < 2:
        raise ValueError(f"the corpus has {len(docs)} document(s); pretraining needs at least 2 "
                         "(documents are separated by <|endoftext|> in .txt, one per line in .jsonl)")
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(docs) - 1, max(1, int(round(val_fraction * len(docs)))))  # a document on each side
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    train_docs = [docs[i] for i in train]
    seen = set(train_docs)
    val_docs = [docs[i] for i in val if docs[i] not in seen]
    if not val_docs:
        raise ValueError(f"all {len(val)} validation documents are copies of training documents, so no held-out "
                         "text is left: use a corpus with more distinct documents or a larger --val_fraction")
    return train_docs, val_docs, len(val) - len(val_docs)


def ensure_tokenizer(cfg, train_docs: list[str], corpus_digest: str) -> tuple[Tokenizer, str]:
    """Train the tokenizer on the training documents, or reuse the one in out/<preset>/tokenizer/ when its
    key.txt matches: the tokenizer kind, the corpus digest, the vocabulary size, and the seed and
    val_fraction that chose the training documents.

    With `--tokenizer=gpt2`, tiktoken's GPT-2 encoding is used instead (from its local cache; a clear
    error says which files are missing -- nothing is downloaded); it is written to the same folder with
    its own key, so a later `--tokenizer=train` run never mistakes it for a trained one.
    """
    if cfg.tokenizer not in ("train", "gpt2"):
        raise ValueError(f"--tokenizer={cfg.tokenizer!r}: expected 'train' or 'gpt2'")
    tdir = stage_dir(cfg, "tokenizer")
    path = os.path.join(tdir, "tokenizer.json")
    key_path = os.path.join(tdir, "key.txt")
    key = "gpt2" if cfg.tokenizer == "gpt2" else \
        f"train-{corpus_digest}-vocab{cfg.vocab_size}-seed{cfg.seed}-val{cfg.val_fraction!r}"
    if (cfg.tokenizer == "train" and os.path.exists(path) and os.path.exists(key_path)
            and open(key_path).read() == key and not cfg.force):
        return Tokenizer.load(path), path
    watch = Stopwatch()
    tok = Tokenizer.gpt2() if cfg.tokenizer == "gpt2" else Tokenizer.train("<|endoftext|>".join(train_docs),
                                                                          cfg.vocab_size)
    if os.path.exists(key_path):
        os.remove(key_path)  # no moment where an old key stands next to a new tokenizer.json
    tok.save(path)
    with open(key_path, "w") as f:
        f.write(key)
    summary = {"tokenizer": cfg.tokenizer, "vocab_size": tok.n_vocab, "seconds": round(watch.seconds(), 2)}
    if cfg.tokenizer == "train":
        summary["corpus_chars"] = sum(map(len, train_docs))
    write_json(os.path.join(tdir, "summary.json"), summary)
    return tok, path


def encode_documents(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """Documents (each followed by <|endoftext|>) as one flat array of token ids (uint16 when they fit)."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tok.encode(doc))
        ids.append(tok.eot_id)
    return np.asarray(ids, dtype=np.uint16 if tok.n_vocab <= 65536 else np.uint32)


def write_tokens(ids: np.ndarray, path: str) -> np.memmap:
    """Write a token array to `path` (atomically: a .tmp file renamed) and return it memory-mapped."""
    arr = np.memmap(path + ".tmp", dtype=ids.dtype, mode="w+", shape=(len(ids),))
    arr[:] = ids
    arr.flush()
    del arr
    os.replace(path + ".tmp", path)
    return np.memmap(path, dtype=ids.dtype, mode="r")


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the tokens' unigram distribution: the loss of a model that ignores context."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def load_tokens(path: str, vocab_size: int) -> np.memmap:
    """Open a token file written by `write_tokens` (its dtype follows from the vocabulary size)."""
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r")


def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator, device):
    """Random windows: x (B, T) and y = x shifted by one (B, T).

    Starts are drawn from [0, len - T - 1): the last possible start, len - T - 1, never is, so the split's
    final token is never a target (one token in hundreds of thousands on tiny). Kept as it is because
    moving the bound would change every sampled window, and with it every reported number."""
    starts = torch.randint(0, len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([torch.from_numpy(data[s:s + block_size].astype(np.int64)) for s in starts.tolist()])
    y = torch.stack([torch.from_numpy(data[s + 1:s + 1 + block_size].astype(np.int64)) for s in starts.tolist()])
    return x.to(device), y.to(device)


def lm_loss(model, x, y):
    """Next-token cross-entropy, mean over all B*T positions."""
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


@torch.no_grad()
def validation_loss(model, val_data, cfg, device) -> float:
    """Mean `lm_loss` over `cfg.eval_batches` batches of random validation windows (batch_size x block_size), under
    the stage's autocast. Each batch goes through the model in micro-batches of batch_size / grad_accum windows,
    as training does (equal sizes, so the mean of their means is the batch's mean).

    The windows come from a generator seeded `cfg.seed + 1` at every call, so every evaluation scores the same ones.
    Leaves the model in train mode.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # the same windows at every evaluation
    model.eval()
    micro = micro_batch_size(cfg)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = get_batch(val_data, cfg.batch_size, cfg.block_size, gen, device)  # (batch_size, block_size) each
        for i in range(0, cfg.batch_size, micro):
            with autocast(device, cfg.dtype):
                losses.append(lm_loss(model, x[i:i + micro], y[i:i + micro]))
    model.train()
    return torch.stack(losses).mean().item()


# ----------------------------------------------------------------------------------------------------
# the stage


def run(cfg: PretrainConfig) -> dict:
    """`minirlhf pretrain`: train the tokenizer (or reuse it) and a GPT on the corpus.

    Reads --corpus, or the world's corpus.txt (the world is built first if it is missing). The tokenizer lives in
    out/<preset>/tokenizer/ (`ensure_tokenizer`). Writes under out/<preset>/pretrain/ tokenizer.json, train.bin,
    val.bin, config.json, metrics.jsonl, ckpt.pt, model.pt and summary.json, and returns the summary (validation loss,
    unigram entropy, sizes, tokens/s, held-out perplexity, and on the world's corpus `world_metrics`); on every rank
    under torchrun. A finished run with the same config and corpus is reused (not with --force or --resume);
    --stop_after before the end returns {"stage", "steps", "interrupted": True} without model.pt or summary.
    ValueError when a split is shorter than one window of block_size + 1 tokens.
    """
    from minirlhf.config import fill_from_preset

    fill_from_preset(cfg)
    out = stage_dir(cfg, STAGE)
    device = resolve_device(cfg.device)
    setup_torch(device)
    watch = Stopwatch()

    # 1. corpus
    cpath = dist.on_main(corpus_path, cfg)  # rank 0 builds the world if it is missing; the others wait
    digest = file_digest(cpath)
    from minirlhf.evaluate import judge_inputs
    inputs = {"corpus": digest, **judge_inputs(cfg)}  # the base model's forum and cloze evaluations read the world
    key = config_key(cfg, inputs, __name__)  # __name__: its code (and what it imports) is part of the key
    # --resume trains on from ckpt.pt, so it never reuses (nor removes the summary: see `reusable`)
    if (summary := reusable(out, key, cfg.force, resume=cfg.resume)) is not None:
        dist.print0(f"[pretrain] reusing {out}/model.pt (same config and corpus; --force to retrain)")
        return summary
    docs = read_corpus(cpath)
    train_docs, val_docs, val_copies = split_documents(docs, cfg.val_fraction, cfg.seed)

    # 2-3. tokenizer and token files. Rank 0 builds them in memory, and every check runs before `begin_writing`
    # (the split lengths, and with --resume the checkpoint's settings): a refused run leaves `out` as it was,
    # never a new tokenizer.json next to the old model.pt. The other ranks read the files after the barrier.
    if dist.is_main():
        tok, tok_path = ensure_tokenizer(cfg, train_docs, digest)  # (its own folder: a keyed cache)
        cfg.vocab_size = tok.n_vocab  # the model's V is the tokenizer's, special tokens included
        train_ids, val_ids = encode_documents(tok, train_docs), encode_documents(tok, val_docs)
        for name, ids in (("training", train_ids), ("validation", val_ids)):
            if len(ids) <= cfg.block_size + 1:
                raise ValueError(f"{cpath}: the {name} split has {len(ids)} tokens; sampling windows of "
                                 f"block_size+1 = {cfg.block_size + 1} needs at least {cfg.block_size + 2}: use a "
                                 "larger corpus or a smaller --block_size")
        ckpt_path = os.path.join(out, "ckpt.pt")
        if cfg.resume:
            if not os.path.exists(ckpt_path):
                raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; run without --resume first")
            check_resume(ckpt_path, ck.load_checkpoint(ckpt_path).get("run"), cfg, inputs)
        begin_writing(out, cfg)  # only now is `out` touched: the old summary goes, config.json is written
        shutil.copyfile(tok_path, os.path.join(out, "tokenizer.json"))
        train_data = write_tokens(train_ids, os.path.join(out, "train.bin"))
        val_data = write_tokens(val_ids, os.path.join(out, "val.bin"))
        del train_ids, val_ids
    dist.barrier()
    if not dist.is_main():
        tok = Tokenizer.load(os.path.join(out, "tokenizer.json"))
        cfg.vocab_size = tok.n_vocab
        train_data = load_tokens(os.path.join(out, "train.bin"), tok.n_vocab)
        val_data = load_tokens(os.path.join(out, "val.bin"), tok.n_vocab)
    entropy = unigram_entropy(train_data, tok.n_vocab)

    # 4. model and optimiser
    torch.manual_seed(cfg.seed)
    model = GPT(model_config_from(cfg)).to(device)
    optimizer = make_adamw(model.optimizer_groups(cfg.weight_decay), cfg.lr, (cfg.beta1, cfg.beta2), device)
    train_model = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    ddp_model = dist.data_parallel(train_model)  # the model itself in one process
    data_gen = torch.Generator().manual_seed(cfg.seed)
    dist.print0(f"[pretrain] {model.num_params() / 1e6:.2f}M parameters, {len(train_data):,} training tokens, "
          f"vocab {tok.n_vocab}, device {device}")

    # 5. train (see train_loop.py: schedule, accumulation, clipping, NaN guard, checkpoints, resume)
    micro_batch_size(cfg)  # checks that grad_accum divides batch_size
    step_batch: dict = {}

    def batch_loss(step, rows):
        if step_batch.get("step") != step:  # the step's global batch: every rank draws the same windows
            step_batch.update(step=step, xy=get_batch(train_data, cfg.batch_size, cfg.block_size, data_gen, "cpu"))
        x, y = step_batch["xy"]
        return lm_loss(ddp_model, x[rows].to(device), y[rows].to(device)), {}  # a mean over B*T: example weights

    def evaluate():
        return {"val_loss": validation_loss(train_model, val_data, cfg, device)}

    result = train_loop(STAGE, cfg, model, optimizer, out, batch_loss, evaluate, device,
                        generators={"data": data_gen}, loss_name="lm_loss", wrapped=ddp_model, inputs=inputs)
    if result["interrupted"]:
        return {"stage": STAGE, "steps": result["steps"], "interrupted": True}
    if not dist.is_main():
        return dist.share()  # rank 0 alone evaluates and writes the artifacts; its summary comes back
    val_loss = result["last_eval"]["val_loss"]
    tokens_per_step = cfg.batch_size * cfg.block_size

    # 6. artifacts
    step = result["steps"]
    ck.save_checkpoint(os.path.join(out, "model.pt"), ck.model_payload(model, STAGE, step=step))
    summary = {
        "stage": STAGE, "key": key, "steps": step, "stopped_early": result["stopped_early"],
        "val_loss": round(val_loss, 4),
        "unigram_entropy": round(entropy, 4), "params": model.num_params(),
        "train_tokens": int(len(train_data)), "val_tokens": int(len(val_data)), "vocab_size": tok.n_vocab,
        "val_documents_left_out_as_copies": val_copies,
        "tokens_per_second": round(result["trained_steps"] * tokens_per_step / max(result["seconds"], 1e-9), 1),
        "seconds": round(watch.seconds(), 2), "device": str(device),
    }
    from minirlhf.evaluate import heldout_perplexity

    summary["heldout_ppl"] = round(heldout_perplexity(model, out, cfg.block_size), 4)  # the alignment-tax baseline
    summary.update(world_metrics(model, tok, cfg, device))
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"[pretrain] val loss {val_loss:.3f} nats (unigram entropy {entropy:.3f}), "
          f"{summary['tokens_per_second']:,.0f} tokens/s, {summary['seconds']:.0f} s")
    return dist.share(summary)


def world_metrics(model, tok, cfg, device) -> dict:
    """What the base model knows (fact cloze accuracy) and how it behaves in the forum format."""
    if cfg.corpus:
        return {}
    from minirlhf.evaluate import FORUM_SAMPLES, cloze_accuracy, forum_eval

    world_dir = os.path.join(cfg.out_dir, cfg.preset, "world")
    out = {f"cloze_accuracy_{split}": round(acc, 4) for split, acc in cloze_accuracy(model, tok, world_dir).items()}
    forum, _ = forum_eval(model, tok, world_dir, seed=cfg.seed, samples_per_prompt=FORUM_SAMPLES)
    out.update({k: round(v, 4) for k, v in forum.items()})
    return out
