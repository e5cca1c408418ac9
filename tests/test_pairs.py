"""On-policy pairs: which samples belong to which prompt, how they are decoded, what counts as empty."""

import types

import pytest
import torch

from minirlhf import pairs
from minirlhf.chat import render_prompt
from minirlhf.tokenizer import Tokenizer

from conftest import english_like_documents, generation_of


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(" ".join(english_like_documents(50)), 300)


def scripted_generate(tok, budgets: list):
    """A stand-in for engine.generate: each row's reply names its prompt's length in tokens ("len 12"), ends
    with <|end|> and is right-padded as the engine pads it; the token budget of every call goes to `budgets`."""

    def generate(model, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, generator=None):
        budgets.append(max_new_tokens)
        replies = [tok.encode(f"len {len(p)}") + [eos_id] for p in prompts]
        return generation_of(prompts, replies, pad_id, trailing_pads=2)  # pads after every reply

    return generate


def test_sample_responses_gives_each_prompt_its_own_replies(tok, monkeypatch):
    # k = 2: result[j] holds prompt j's two replies, decoded up to their <|end|> (no pad after it), and each
    # batch's budget leaves room after its LONGEST prompt (a shorter one would let it overrun the context)
    budgets = []
    monkeypatch.setattr(pairs, "generate", scripted_generate(tok, budgets))
    policy = types.SimpleNamespace(config=types.SimpleNamespace(block_size=64), lm_head=torch.nn.Linear(1, 1))
    prompts = ["Hi.", "What is two plus three plus four?", "Tell me about cats."]
    n = [len(render_prompt(tok, p)) for p in prompts]
    assert len(set(n)) == 3  # three different lengths, so three different replies
    out = pairs.sample_responses(policy, tok, prompts, 2, 1000, 1.0, 0, batch_size=4)
    assert out == [[f"len {m}<|end|>"] * 2 for m in n]
    assert budgets == [64 - max(n[0], n[1]), 64 - n[2]]  # batches: prompts 0, 0, 1, 1 and 2, 2


def test_a_whitespace_only_reply_is_empty():
    # " <|end|>" has no text before its <|end|>: no valid TRL row, so never paired and counted as empty
    assert pairs.is_empty("<|end|>") and pairs.is_empty(" <|end|>") and pairs.is_empty("\n <|end|>")
    assert not pairs.is_empty(" a<|end|>")
    samples = ["a<|end|>", " <|end|>", "b<|end|>", "c<|end|>"]
    assert pairs.pair_responses(samples, "disjoint") == ([("b<|end|>", "c<|end|>")], 0, 1)
    assert pairs.pair_responses(samples, "all") == ([("a<|end|>", "b<|end|>"), ("a<|end|>", "c<|end|>"),
                                                     ("b<|end|>", "c<|end|>")], 0, 1)
