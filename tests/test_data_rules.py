"""Pretraining's data rules and the readers' edge cases, checked by hand: how documents are split, joined,
tokenised, windowed and scored (split_documents, ensure_tokenizer, encode_documents and the token files,
unigram_entropy, get_batch, lm_loss, validation_loss, the summary pretrain.run writes), what the JSONL readers
accept and report, the smallest BPE vocabulary, and the chat template's masks (system text, render_reply)."""

import json
import math
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minirlhf import pretrain
from minirlhf.chat import render_conversation, render_prompt, render_reply
from minirlhf.config import PretrainConfig, make_config
from minirlhf.data import DataError, read_corpus, read_kto, read_preferences, read_prompts, read_sft
from minirlhf.tokenizer import ENDOFTEXT, Tokenizer

from conftest import english_like_documents, write_jsonl


@pytest.fixture(scope="module")
def tok():
    """A small BPE trained on generated text (300 ids: 256 bytes, 39 merges, 5 control tokens)."""
    return Tokenizer.train(ENDOFTEXT.join(english_like_documents(100)), 300)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ----------------------------------------------------------------------------------------------------
# split_documents, ensure_tokenizer


def test_split_rounds_the_validation_share_and_keeps_corpus_order():
    """round(val_fraction * n) documents are held out (0.38 * 10 -> 4, not 3), and each side keeps the corpus order."""
    docs = [f"document {i}" for i in range(10)]
    train, val, copies = pretrain.split_documents(docs, 0.38, seed=3)
    assert (len(train), len(val), copies) == (6, 4, 0)
    assert sorted(train + val) == sorted(docs)
    assert train == sorted(train, key=docs.index) and val == sorted(val, key=docs.index)


def test_split_needs_two_documents_and_holds_out_at_least_one():
    """One document is refused by name, and a share that rounds to 0 documents still holds out 1."""
    with pytest.raises(ValueError, match=r"the corpus has 1 document\(s\); pretraining needs at least 2"):
        pretrain.split_documents(["the only one"], 0.5, seed=0)
    train, val, _ = pretrain.split_documents([f"d{i}" for i in range(10)], 0.01, seed=0)
    assert (len(train), len(val)) == (9, 1)


def test_a_large_validation_share_still_leaves_a_training_document():
    """A val_fraction that rounds to every document (2 or 3 of them) keeps one for training (it used to keep none)."""
    assert pretrain.split_documents(["first story", "second story"], 0.9, seed=0)[:2] in (
        (["first story"], ["second story"]), (["second story"], ["first story"]))
    train, val, _ = pretrain.split_documents(["a b", "c d", "e f"], 0.9, seed=0)
    assert (len(train), len(val)) == (1, 2) and sorted(train + val) == ["a b", "c d", "e f"]


def tokenizer_cfg(tmp_path, **kw):
    return PretrainConfig(preset="micro", out_dir=str(tmp_path), **kw)


def test_tokenizer_is_trained_with_documents_as_boundaries(tmp_path):
    """ensure_tokenizer joins documents with <|endoftext|>: on "ka", "lo", ... the merges are ka, lo (never al)."""
    tok, _ = pretrain.ensure_tokenizer(tokenizer_cfg(tmp_path, vocab_size=263), ["ka", "lo"] * 40, "digest")
    merged = {t: r for t, r in tok.mergeable_ranks.items() if r >= 256}
    assert merged == {b"ka": 256, b"lo": 257}


def test_force_retrains_a_tokenizer_whose_key_matches(tmp_path, monkeypatch):
    """--force retrains the tokenizer even when key.txt matches; without it the same key reuses it."""
    calls = []
    real = Tokenizer.train.__func__
    monkeypatch.setattr(Tokenizer, "train", classmethod(lambda cls, *a, **k: calls.append(1) or real(cls, *a, **k)))
    docs = english_like_documents(40)
    cfg = tokenizer_cfg(tmp_path, vocab_size=280)
    pretrain.ensure_tokenizer(cfg, docs, "digest")
    pretrain.ensure_tokenizer(cfg, docs, "digest")
    assert len(calls) == 1
    cfg.force = True
    assert pretrain.ensure_tokenizer(cfg, docs, "digest")[0].n_vocab == 280 and len(calls) == 2


# ----------------------------------------------------------------------------------------------------
# token files, entropy, windows, losses


class WordIds:
    """A stand-in tokenizer: each whitespace-separated word is a decimal id; <|endoftext|> is the last id."""

    def __init__(self, n_vocab):
        self.n_vocab, self.eot_id = n_vocab, n_vocab - 1

    def encode(self, text):
        return [int(w) for w in text.split()]


def test_documents_end_with_endoftext_and_token_files_keep_every_id(tmp_path):
    """Each document is followed by <|endoftext|>; uint16 up to 65536 ids, uint32 past; load_tokens reads back write_tokens."""
    small = pretrain.encode_documents(WordIds(300), ["1 2", "3"])
    assert small.dtype == np.uint16 and small.tolist() == [1, 2, 299, 3, 299]
    for n_vocab, dtype in ((65536, np.uint16), (65537, np.uint32)):
        ids = pretrain.encode_documents(WordIds(n_vocab), ["7 65535", "0"])
        assert ids.dtype == dtype and ids.tolist() == [7, 65535, n_vocab - 1, 0, n_vocab - 1]
        path = str(tmp_path / f"{n_vocab}.bin")
        pretrain.write_tokens(ids, path)
        assert pretrain.load_tokens(path, n_vocab).tolist() == ids.tolist()


def test_unigram_entropy_by_hand():
    """unigram_entropy in nats by hand: 0, ln 2 and 1.5 ln 2; ids the tokens never use change nothing."""
    assert pretrain.unigram_entropy(np.array([3, 3, 3], dtype=np.uint16), 10) == pytest.approx(0.0, abs=1e-12)
    assert pretrain.unigram_entropy(np.array([0, 1, 1, 0], dtype=np.uint16), 50) == pytest.approx(math.log(2))
    assert pretrain.unigram_entropy(np.array([5, 2, 9, 9], dtype=np.uint16), 10) == pytest.approx(1.5 * math.log(2))


def test_windows_are_next_token_pairs_from_the_documented_starts():
    """get_batch: y is x shifted by one (int64), starts drawn from [0, len - T - 1) exactly as documented."""
    T = 5
    x, y = pretrain.get_batch(np.arange(T + 2, dtype=np.uint16), 16, T, torch.Generator().manual_seed(0), "cpu")
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (16, T)
    assert (x == torch.arange(T)).all() and (y == torch.arange(1, T + 1)).all()
    x, y = pretrain.get_batch(np.arange(50, dtype=np.uint16), 400, T, torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(y, x + 1) and torch.equal(x, x[:, :1] + torch.arange(T))
    assert x[:, 0].min() == 0 and x[:, 0].max() == 50 - T - 2


def test_lm_loss_is_the_mean_over_every_position():
    """lm_loss is the cross-entropy of each (row, position) computed alone, averaged over all B * T of them."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    y = torch.randint(0, 7, (2, 3))
    by_hand = sum(-torch.log_softmax(logits[b, t], -1)[y[b, t]] for b in range(2) for t in range(3)) / 6
    assert pretrain.lm_loss(lambda x: logits, torch.zeros(2, 3, dtype=torch.long), y).item() == \
        pytest.approx(by_hand.item(), rel=1e-6)


class Recorder(torch.nn.Module):
    """A stand-in model whose logits favour the input token itself; records each call's windows and mode."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.calls = vocab, []

    def logits(self, x):
        return 3.0 * F.one_hot(x, self.vocab).float()

    def forward(self, x):
        self.calls.append((x.clone(), self.training))
        return self.logits(x)


def test_validation_loss_scores_the_same_seeded_windows_in_eval_mode():
    """validation_loss: eval_batches batches seeded seed + 1, eval mode while scoring, train mode after, their mean."""
    val = np.random.default_rng(0).integers(0, 11, 300).astype(np.uint16)
    cfg = SimpleNamespace(seed=4, eval_batches=3, batch_size=2, block_size=6, dtype="float32", grad_accum=1)
    model = Recorder(11).train()
    loss = pretrain.validation_loss(model, val, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    expected = [pretrain.get_batch(val, 2, 6, gen, "cpu") for _ in range(3)]
    assert [training for _, training in model.calls] == [False] * 3 and model.training
    assert all(torch.equal(x, e) for (x, _), (e, _) in zip(model.calls, expected))
    mean = sum(F.cross_entropy(model.logits(x).view(-1, 11), y.view(-1)) for x, y in expected) / 3
    assert loss == pytest.approx(mean.item(), rel=1e-6)
    assert pretrain.validation_loss(model, val, cfg, torch.device("cpu")) == loss
    # with --grad_accum=2 the same windows go through the model one at a time (a micro-batch), same mean
    model.calls.clear()
    cfg.grad_accum = 2
    assert pretrain.validation_loss(model, val, cfg, torch.device("cpu")) == pytest.approx(loss, rel=1e-6)
    assert [x.shape[0] for x, _ in model.calls] == [1] * 6
    assert all(torch.equal(torch.cat([a, b]), e) for (a, _), (b, _), (e, _) in
               zip(model.calls[0::2], model.calls[1::2], expected))


def test_pretrain_files_and_summary_recomputed_from_the_token_files(tmp_path, monkeypatch):
    """pretrain.run's token files, summary counts/entropy/copies and grad_accum micro-batches, by hand; a split of block_size + 1 tokens is refused."""
    docs = english_like_documents(60) + ["The same story, told again."] * 12
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(ENDOFTEXT.join(docs))
    draws, micro = [], []
    real_batch, real_loss = pretrain.get_batch, pretrain.lm_loss
    monkeypatch.setattr(pretrain, "get_batch", lambda *a: draws.append((len(a[0]), real_batch(*a))) or draws[-1][1])
    monkeypatch.setattr(pretrain, "lm_loss", lambda m, x, y: (micro.append(x) if m.training else None) or
                        real_loss(m, x, y))
    over = dict(preset="micro", out_dir=str(tmp_path / "out"), corpus=str(corpus), vocab_size=300, n_layer=1,
                n_embd=16, n_head=2, block_size=16, batch_size=4, grad_accum=2, max_steps=2, eval_interval=2,
                eval_batches=1, log_interval=1, warmup_steps=1, val_fraction=0.3, progress=False)
    summary = pretrain.run(make_config(PretrainConfig, overrides=over))
    d = tmp_path / "out" / "micro" / "pretrain"
    tok = Tokenizer.load(d / "tokenizer.json")
    train, val = (np.fromfile(d / name, dtype=np.uint16) for name in ("train.bin", "val.bin"))
    splits = []  # each split: its documents, each followed by <|endoftext|>
    for ids in (train, val):
        assert ids[-1] == tok.eot_id
        splits.append(tok.decode(ids.tolist()).split(ENDOFTEXT)[:-1])
    train_docs, val_docs = splits
    n_val = round(0.3 * len(docs))  # documents drawn for validation; copies of training ones are then left out
    assert len(train_docs) == len(docs) - n_val and not set(train_docs) & set(val_docs)
    assert all(map(docs.__contains__, train_docs + val_docs))
    assert train_docs == sorted(train_docs, key=docs.index) and val_docs == sorted(val_docs, key=docs.index)
    assert summary["val_documents_left_out_as_copies"] == n_val - len(val_docs) > 0
    assert (summary["train_tokens"], summary["val_tokens"]) == (len(train), len(val))
    counts = np.array(  # the training split's unigram entropy, recounted
        list(Counter(train.tolist()).values()), dtype=np.float64) / len(train)
    assert summary["unigram_entropy"] == pytest.approx(-(counts * np.log(counts)).sum(), abs=6e-5)
    training_draws = [x for n, (x, _) in draws if n == len(train)]
    assert len(training_draws) == 2  # one per optimiser step, not one per micro-batch
    assert len(micro) == 4 and all(x.shape == (2, 16) for x in micro)
    assert torch.equal(torch.cat(micro[:2]), training_draws[0]) and torch.equal(torch.cat(micro[2:]), training_draws[1])
    n = len(val)  # block_size = n - 1: a window needs n + 1 tokens, one more than the validation split has
    with pytest.raises(ValueError, match=rf"the validation split has {n} tokens; sampling windows of block_size\+1"):
        pretrain.run(make_config(PretrainConfig, overrides={**over, "block_size": n - 1}))


# ----------------------------------------------------------------------------------------------------
# readers


def test_a_reply_list_must_be_exactly_one_assistant_message(tmp_path):
    """A reply given as a list holds exactly one assistant message: two, or a user one, is an error naming the roles."""
    for reply, roles in (([assistant("a"), assistant("b")], "[assistant, assistant]"), ([user("a")], "[user]")):
        path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": reply, "rejected": "r"}])
        with pytest.raises(DataError, match=re.escape(f'{path}:1: key "chosen" must be a non-empty string or a list '
                                                      f"with one assistant message, got messages with roles {roles}")):
            read_preferences(path)
        path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "p", "completion": reply, "label": True}])
        with pytest.raises(DataError, match=re.escape(f'{path}:1: key "completion" must be') + ".*" + re.escape(roles)):
            read_kto(path)


def test_implicit_prompt_mismatch_names_the_first_differing_message(tmp_path):
    """Without "prompt", the error names the first (0-based) message where chosen and rejected differ."""
    rows = [{"chosen": [user("p"), assistant("a")], "rejected": [user("other"), assistant("b")]},
            {"chosen": [user("q"), assistant("x"), user("q2"), assistant("a")],
             "rejected": [user("q"), assistant("y"), user("q2"), assistant("b")]}]
    for row, i in zip(rows, (0, 1)):
        path = write_jsonl(tmp_path / "prefs.jsonl", [row])
        with pytest.raises(DataError, match=rf"they differ at message {i}$"):
            read_preferences(path)


def test_max_prompt_tokens_below_one_is_refused(tmp_path, tok):
    """max_prompt_tokens=0 is an argument error, not a "too long" error on the first line."""
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match=r"^max_prompt_tokens must be >= 1, got 0$"):
        read_prompts(path, tokenizer=tok, max_prompt_tokens=0)


def test_kto_prompts_are_length_checked_truncated_and_counted(tmp_path, tok):
    """read_kto length-checks prompts (contents + 2 per message + 1), truncates and counts on request, and fills its report."""
    long_text = "The lo sees a ka! The mi likes a ne."
    n = len(tok.encode(long_text)) + 3
    path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Hi", "completion": "ok", "label": True},
                                               {"prompt": long_text, "completion": "no", "label": False}])
    with pytest.raises(DataError, match=re.escape(f'{path}:2: key "prompt" is too long: {n} tokens')):
        read_kto(path, tokenizer=tok, max_prompt_tokens=n - 1)
    report = {}
    rows = read_kto(path, tokenizer=tok, max_prompt_tokens=n - 1, truncate=True, report=report)
    kept = rows[1]["prompt"][0]["content"]
    assert long_text.endswith(kept) and len(tok.encode(kept)) + 3 <= n - 1 < len(tok.encode(long_text)) + 3
    assert report == {"records": 2, "rows": 2, "dropped_identical": 0, "truncated_prompts": 1}


def test_corpus_extension_is_case_insensitive(tmp_path):
    """A corpus named CORPUS.JSONL is read as JSONL {"text"} lines, not as plain text."""
    path = write_jsonl(tmp_path / "CORPUS.JSONL", [{"text": "a b"}, {"text": "c"}])
    assert read_corpus(path) == ["a b", "c"]


def test_sft_with_lines_gives_file_lines(tmp_path):
    """read_sft(with_lines=True) gives each conversation's 1-based line in the file, blank lines counted."""
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join([json.dumps({"prompt": "a", "completion": "b"}), "", "  ",
                               json.dumps({"messages": [user("c"), assistant("d")]})]) + "\n")
    conversations, lines = read_sft(path, with_lines=True)
    assert lines == [1, 4] and conversations[1] == [user("c"), assistant("d")]


# ----------------------------------------------------------------------------------------------------
# BPE vocabulary size, chat template


def test_smallest_vocabulary_has_no_merges_and_sizes_must_be_ints():
    """vocab_size=261 is 256 bytes + 5 control tokens and no merge; a float vocab_size is refused, not accepted."""
    tok = Tokenizer.train("any text at all", 261)
    assert tok.n_vocab == 261 and len(tok.mergeable_ranks) == 256
    assert sorted(tok.special_tokens.values()) == list(range(256, 261))
    with pytest.raises(ValueError, match=r"vocab_size must be an int >= 261"):
        Tokenizer.train(ENDOFTEXT.join(english_like_documents(40)), 300.0)


def test_system_text_joins_the_first_user_turn_only(tok):
    """A system message is prepended (blank line between) to the first user turn only, in conversations and prompts."""
    msgs = [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello"), user("Bye"), assistant("Ok")]
    U, A, E = tok.user_id, tok.assistant_id, tok.end_id
    ids, _ = render_conversation(tok, msgs)
    assert ids == [U, *tok.encode("Be brief.\n\nHi"), E, A, *tok.encode("Hello"), E,
                   U, *tok.encode("Bye"), E, A, *tok.encode("Ok"), E]
    assert render_prompt(tok, msgs[:4]) == ids[:len(ids) - len(tok.encode("Ok")) - 2] + [A]


def test_render_reply_masks_the_final_reply_only(tok):
    """render_reply's mask is 1 on the final reply and its <|end|> only: not an earlier assistant turn, not <|assistant|>."""
    prompt = [user("Hi"), assistant("Hello there"), user("And you?")]
    ids, mask = render_reply(tok, prompt, "Fine, thanks.")
    U, A, E = tok.user_id, tok.assistant_id, tok.end_id
    head = [U, *tok.encode("Hi"), E, A, *tok.encode("Hello there"), E, U, *tok.encode("And you?"), E, A]
    reply = tok.encode("Fine, thanks.")
    assert ids == head + reply + [E]
    assert mask == [0] * len(head) + [1] * (len(reply) + 1)
