"""The SFT stage: the loss mask (assistant tokens and <|end|> only), padding, the validation loss by hand,
truncation, reshuffling, over-long conversations, reuse and refused runs. Uses conftest's micro `base`."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from minirlhf import checkpoint as ck
from minirlhf import sft
from minirlhf.chat import render_conversation
from minirlhf.config import SFTConfig, make_config

from conftest import QA, write_jsonl


def test_sft_loss_mask_is_exactly_assistant_tokens_and_end(base):
    tok = base["tok"]
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello friend"}]
    ids, mask = render_conversation(tok, messages)
    x, y, m = sft.collate([(ids, mask)], tok.pad_id, "cpu")
    supervised = [t for t, keep in zip(y[0].tolist(), m[0].tolist()) if keep]
    assert supervised == tok.encode("Hello friend") + [tok.end_id]
    assert torch.equal(x[0], torch.tensor(ids[:-1])) and torch.equal(y[0], torch.tensor(ids[1:]))


def test_sft_collate_pads_without_supervising_pads(base):
    tok = base["tok"]
    a = render_conversation(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    b = render_conversation(tok, [{"role": "user", "content": "a much longer question"},
                                  {"role": "assistant", "content": "and a longer answer too"}])
    x, y, m = sft.collate([a, b], tok.pad_id, "cpu")
    n = len(a[0]) - 1
    assert (x[0, n:] == tok.pad_id).all() and m[0, n:].sum() == 0


def supervised_token_loss(model, examples) -> float:
    """By hand: the mean cross-entropy over every supervised token of `examples`, one unpadded example at a time."""
    total, count = 0.0, 0
    for ids, mask in examples:
        keep = torch.tensor(mask[1:]).bool()  # the mask of each predicted token
        with torch.no_grad():
            nll = F.cross_entropy(model(torch.tensor([ids[:-1]]))[0].double(), torch.tensor(ids[1:]), reduction="none")
        total, count = total + nll[keep].sum().item(), count + int(keep.sum())
    return total / count


def qa_examples(tok):
    """The QA conversations rendered as SFT examples (ids, loss mask); they have different token counts."""
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    return sft.encode_conversations(tok, conversations, 65, False, "x")[0]


def test_sft_stage_trains_and_lowers_validation_loss(base):
    # the reported val_loss is the saved model's mean loss over the validation set's supervised tokens (the QA
    # set, repeated), computed by hand, and it is below the base model's
    over = dict(preset="micro", out_dir=base["out"], init=base["init"], data=base["sft"], eval_data=base["sft"],
                max_steps=25, lr=3e-3, warmup_steps=2, eval_interval=25, progress=False)
    examples = qa_examples(base["tok"])
    summary = sft.run(make_config(SFTConfig, overrides=over))
    trained = ck.load_model(os.path.join(base["out"], "micro", "sft", "model.pt"))[0].eval()
    assert summary["val_loss"] == pytest.approx(supervised_token_loss(trained, examples), abs=2e-4)
    assert summary["val_loss"] < supervised_token_loss(ck.load_model(base["init"])[0].eval(), examples)
    assert os.path.exists(os.path.join(base["out"], "micro", "sft", "tokenizer.json"))


def test_sft_validation_loss_is_a_mean_over_supervised_tokens(base):
    # examples with different numbers of supervised tokens: whatever the batch size, the loss is the mean over
    # all their tokens (by hand), not a mean of batch means
    model = ck.load_model(base["init"])[0]
    examples = qa_examples(base["tok"])
    assert len({sum(m[1:]) for _, m in examples}) > 1
    by_hand = supervised_token_loss(model.eval(), examples)
    for batch_size in (1, 3, 4):
        loss = sft.sft_validation_loss(model, examples, base["tok"].pad_id, batch_size, torch.device("cpu"), "float32")
        assert loss == pytest.approx(by_hand, abs=1e-5), batch_size


def test_sft_truncation_keeps_the_start_of_the_conversation(base):
    # --truncate cuts on the right: the prompt and the start of the reply stay, the end of the reply goes
    tok = base["tok"]
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 40}]
    ids, mask = render_conversation(tok, messages)
    assert len(ids) > 20
    kept, n = sft.encode_conversations(tok, [messages], 20, True, "x")
    assert n == 1 and kept == [(ids[:20], mask[:20])]


def test_sft_batches_reshuffle_every_epoch():
    # each epoch is a fresh permutation of the examples: one batch per epoch here, so steps 0 and 1 differ
    first, second = (sft.batch_indices(8, 8, step, seed=3) for step in (0, 1))
    assert sorted(first) == sorted(second) == list(range(8)) and first != second


def test_sft_overlong_conversation_is_an_error_or_truncated(base, tmp_path):
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "hi", "completion": "word " * 200}])
    over = dict(preset="micro", out_dir=str(tmp_path / "o"), init=base["init"], data=long, eval_data=long,
                max_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"long.jsonl:1: renders to \d+ tokens"):
        sft.run(make_config(SFTConfig, overrides=over))
    # named by its line in the file, blank lines counted (the README promises file:line)
    spaced = tmp_path / "spaced.jsonl"
    spaced.write_text(json.dumps({"prompt": "hi", "completion": "ok"}) + "\n\n\n"
                      + json.dumps({"prompt": "hi", "completion": "word " * 200}) + "\n")
    with pytest.raises(ValueError, match=r"spaced.jsonl:4: renders to \d+ tokens"):
        sft.run(make_config(SFTConfig, overrides={**over, "data": str(spaced)}))
    summary = sft.run(make_config(SFTConfig, overrides={**over, "truncate": True}))
    assert summary["truncated"] == 2  # the training and validation copies


def test_a_refused_run_leaves_the_finished_stage_folder_as_it_was(base, tmp_path):
    """Bad data, or a --resume with other settings, is refused before anything in the folder changes: the
    summary (so the next plain run still reuses the model), config.json and tokenizer.json stay."""
    over = dict(preset="micro", out_dir=str(tmp_path / "o"), init=base["init"], data=base["sft"],
                eval_data=base["sft"], max_steps=2, eval_interval=2, progress=False)
    sft.run(make_config(SFTConfig, overrides=over))
    folder = tmp_path / "o" / "micro" / "sft"
    before = {name: (folder / name).read_bytes() for name in ("summary.json", "config.json", "tokenizer.json",
                                                              "model.pt")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "ok"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        sft.run(make_config(SFTConfig, overrides={**over, "data": str(bad)}))
    with pytest.raises(ValueError, match=r"--resume: .* other settings"):
        sft.run(make_config(SFTConfig, overrides={**over, "resume": True, "lr": 2e-3}))
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert sft.run(make_config(SFTConfig, overrides=over))["key"] == json.loads(before["summary.json"])["key"]


def test_the_ptx_tokens_are_an_input_and_an_init_in_the_stage_folder_works(base, tmp_path):
    """With a pretraining mix SFT reads pretrain/train.bin: new tokens there mean a new run, not a reuse. And
    --init=the stage's own model.pt (continue from it) trains instead of failing to copy a file onto itself."""
    import shutil

    import numpy as np

    root = tmp_path / "o" / "micro"
    shutil.copytree(os.path.dirname(base["init"]), root / "pretrain")
    over = dict(preset="micro", out_dir=str(tmp_path / "o"), init=str(root / "pretrain" / "model.pt"),
                data=base["sft"], eval_data=base["sft"], max_steps=1, ptx_coef=0.5, ptx_batch_size=2,
                progress=False)
    first = sft.run(make_config(SFTConfig, overrides=over))
    assert sft.run(make_config(SFTConfig, overrides=over)) == first  # reused
    tokens = np.fromfile(root / "pretrain" / "train.bin", dtype=np.uint16)
    tokens[::-1].tofile(root / "pretrain" / "train.bin")  # other pretraining text, same vocabulary
    assert sft.run(make_config(SFTConfig, overrides=over))["key"] != first["key"]  # retrained
    own = str(root / "sft" / "model.pt")
    again = sft.run(make_config(SFTConfig, overrides={**over, "init": own, "lr": 1e-4}))
    assert again["key"] != first["key"] and (root / "sft" / "tokenizer.json").exists()


def test_eval_headline_names_the_numbers_or_says_there_are_none():
    """A stage's last line: no "gold None, KL None" when no world was built (bring-your-own data)."""
    assert sft.eval_headline({"gold": 0.1, "proxy": -0.3, "kl_k1": 1.2, "seconds": 3}) == "gold 0.1, proxy -0.3, KL 1.2"
    assert sft.eval_headline({"gold": 0.1, "kl_k1": 0.5}) == "gold 0.1, KL 0.5"
    assert sft.eval_headline({"seconds": 3}) == "no gold evaluation (no world built for this preset)"
