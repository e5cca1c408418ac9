"""Shared fixtures: a small generated corpus, so tests never depend on downloaded data."""

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
