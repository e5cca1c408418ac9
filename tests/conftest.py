"""Shared fixtures: a small generated corpus, so tests never depend on downloaded data, and `base`, a micro model
pretrained for a few steps with SFT and preference files (the starting point of the stage tests)."""

import json
import os
import random

import pytest


def english_like_documents(n_docs: int = 300, seed: int = 0) -> list[str]:
    """Sentences from a small grammar over a few hundred syllable-built words (seeded)."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ne", "ra", "to", "su", "vi", "de", "po", "an", "el", "or", "is", "un"]
    nouns = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(300)})
    verbs = ["sees", "likes", "finds", "makes", "takes", "gives", "knows", "wants"]
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(rng.randint(2, 6)):
            a, b = rng.choice(nouns), rng.choice(nouns)
            sents.append(f"The {a} {rng.choice(verbs)} a {b}{rng.choice(['.', '!', '?'])}")
        docs.append(" ".join(sents))
    return docs


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("<|endoftext|>".join(english_like_documents()))
    return str(path)


@pytest.fixture
def recording_judge(tmp_path):
    """A user's gold judge (a file for --gold_judge) that scores 0 and records every prompt it receives:
    returns (the --gold_judge spec, a function that reads back the prompts received, in order)."""
    import json

    seen = tmp_path / "judge_received.jsonl"
    judge = tmp_path / "recording_judge.py"
    judge.write_text("import json\n\ndef rec(prompt, response):\n"
                     f"    with open({str(seen)!r}, 'a') as f:\n        f.write(json.dumps(prompt) + '\\n')\n"
                     "    return 0.0\n")
    return f"{judge}:rec", lambda: [json.loads(line) for line in seen.read_text().splitlines()]


def generation_of(prompts: list[list[int]], replies: list[list[int]], pad_id: int, trailing_pads: int = 0):
    """The `engine.Generation` a stand-in policy returns: prompts left-padded, `replies` right-padded (plus
    `trailing_pads` pad columns after the longest), as the engine pads them; log-probs all 0."""
    import torch

    from minirlhf.engine import Generation, left_pad

    response = torch.full((len(prompts), max(map(len, replies)) + trailing_pads), pad_id)  # (B, N)
    mask = torch.zeros_like(response)
    for i, r in enumerate(replies):
        response[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return Generation(*left_pad(prompts, pad_id), response, torch.zeros(response.shape), mask)


QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("What is two plus three?", "Two plus three is five."),
      ("Tell me about cats.", "Cats are small animals that like to sleep."),
      ("How do I pick a lock?", "Sorry, I can't help with that.")]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A micro base model pretrained for a few steps on generated text, plus SFT / preference files."""
    from minirlhf.config import PretrainConfig, make_config
    from minirlhf.pretrain import run as pretrain
    from minirlhf.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("stages")
    corpus = root / "corpus.txt"
    corpus.write_text("<|endoftext|>".join(english_like_documents() + [q + " " + a for q, a in QA] * 20))
    over = dict(preset="micro", out_dir=str(root / "out"), vocab_size=320, max_steps=5, progress=False,
                corpus=str(corpus), n_layer=1, n_embd=32, n_head=2)
    pretrain(make_config(PretrainConfig, overrides=over))
    sft_rows = [{"prompt": q, "completion": a} for q, a in QA] * 4
    prefs = [{"prompt": q, "chosen": a, "rejected": "No.", "gold_chosen": 0.9, "gold_rejected": -0.2,
              "p_chosen": 0.8} for q, a in QA] * 4
    return {
        "root": root, "out": str(root / "out"),
        "init": str(root / "out" / "micro" / "pretrain" / "model.pt"),
        "sft": write_jsonl(root / "sft.jsonl", sft_rows),
        "prefs": write_jsonl(root / "prefs.jsonl", prefs),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": q} for q, _ in QA] * 3),
        "tok": Tokenizer.load(str(root / "out" / "micro" / "pretrain" / "tokenizer.json")),
    }


def untrained_reward_model(base, folder) -> str:
    """<folder>/rm.pt: a scalar head on the micro base model's trunk, with that model's tokenizer.json beside it
    (as every stage writes it: the stages check that a reward model reads the policy's tokens)."""
    import shutil

    from minirlhf import checkpoint as ck
    from minirlhf.model import ScalarModel

    trunk, _ = ck.load_model(base["init"])
    rm = os.path.join(str(folder), "rm.pt")
    ck.save_checkpoint(rm, ck.model_payload(ScalarModel(trunk), "reward"))
    shutil.copy(os.path.join(os.path.dirname(base["init"]), "tokenizer.json"), str(folder))
    return rm
