"""Benchmark: BPE training time and tiktoken encode throughput on ~5 MB of English-like text.

Run:  python benchmarks/bench_tokenizer.py [--mb 5] [--vocab-size 2048] [--seed 0]

The corpus is generated here from a seed (a templated grammar over a few thousand words with a Zipf-like
word distribution, documents separated by ``<|endoftext|>``), so the numbers are reproducible without any
download. It is English-*like*, not English: real text has a longer tail of rare words, so its unique
pre-token count (and thus training time) would be somewhat higher for the same size.
Prints one table: text size, unique pre-tokens, merges, training seconds, encode MB/s (tiktoken, one
thread, plain-text ``encode``), and the check that tiktoken's ids equal the naive reference on a sample.
Training sees the text with its ``<|endoftext|>`` separators; ``encode`` gets it with each separator
replaced by a newline, and bytes / token and encode MB/s are per byte of that encoded text.
"""

from __future__ import annotations

import argparse
import random
import time

from minirlhf.tokenizer import (
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    SPECIAL_TOKENS,
    Tokenizer,
    _count_pretokens,
    naive_bpe_encode,
    train_bpe,
)

FUNCTION_WORDS = (
    "the a an of in on at by with from to for and but or so because while when if then as than "
    "this that these those it its they their he his she her we our you your I my me us them"
).split()
NAMES = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Oscar Peggy Trent Victor Wendy".split()
ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fr gr pl pr st tr sh ch th bl cl fl gl sl sp sk".split()
VOWELS = "a e i o u ea ai ou oo ie".split()
CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "rt"]


def make_lexicon(rng: random.Random, n: int) -> list[str]:
    """n distinct pseudo-words of 1-3 syllables."""
    words: set[str] = set()
    while len(words) < n:
        k = rng.choice((1, 1, 2, 2, 2, 3))
        words.add("".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(k)))
    return sorted(words)


def english_like_text(n_bytes: int, seed: int = 0, n_words: int = 3000) -> str:
    """About ``n_bytes`` of templated English-like documents joined by ``<|endoftext|>``."""
    rng = random.Random(seed)
    lex = make_lexicon(rng, n_words)
    nouns, verbs, adjs = lex[: n_words // 2], lex[n_words // 2 : 5 * n_words // 6], lex[5 * n_words // 6 :]

    def zipf(words: list[str]):
        cum, total = [], 0.0
        for r in range(len(words)):
            total += 1.0 / (r + 1)
            cum.append(total)
        return lambda: rng.choices(words, cum_weights=cum)[0]

    noun, verb, adj = zipf(nouns), zipf(verbs), zipf(adjs)
    templates = [
        lambda: f"The {adj()} {noun()} {verb()}s the {noun()}.",
        lambda: f"{rng.choice(NAMES)} said that the {noun()} was {adj()}, and "
        f"{rng.choice(FUNCTION_WORDS)} {noun()}s {verb()} {rng.randint(2, 999)} times.",
        lambda: f"Why does a {noun()} {verb()} when it's {adj()}?",
        lambda: f"\"I don't {verb()} {noun()}s,\" {rng.choice(NAMES)} replied; \"they're too {adj()}.\"",
        lambda: f"In {rng.randint(1500, 2025)}, {rng.randint(3, 90)}% of {noun()}s in "
        f"{rng.choice(NAMES)}ville were {adj()}.",
        lambda: f"Q: What is the {noun()} of {rng.choice(NAMES)}?\n"
        f"A: It is {rng.choice(['a', 'the'])} {adj()} {noun()}.",
        lambda: f"We'll {verb()} the {noun()} {rng.choice(FUNCTION_WORDS)} the {adj()} {noun()} - maybe.",
    ]
    docs, size = [], 0
    while size < n_bytes:
        paragraphs = []
        for _ in range(rng.randint(1, 4)):
            paragraphs.append(" ".join(rng.choice(templates)() for _ in range(rng.randint(2, 8))))
        doc = "\n\n".join(paragraphs)
        docs.append(doc)
        size += len(doc.encode("utf-8")) + len(ENDOFTEXT)
    return ENDOFTEXT.join(docs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=5.0, help="corpus size in MB")
    ap.add_argument("--vocab-size", type=int, default=2048, help="total vocab incl. 256 bytes + 5 specials")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-words", type=int, default=3000, help="size of the generated lexicon")
    args = ap.parse_args()

    t0 = time.perf_counter()
    text = english_like_text(int(args.mb * 1e6), seed=args.seed, n_words=args.n_words)
    t_gen = time.perf_counter() - t0
    n_bytes = len(text.encode("utf-8"))
    t0 = time.perf_counter()
    n_unique = len(_count_pretokens(text, GPT2_SPLIT_PATTERN))
    t_count = time.perf_counter() - t0

    n_merges = args.vocab_size - 256 - len(SPECIAL_TOKENS)
    t0 = time.perf_counter()
    merges = train_bpe(text, n_merges)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok = Tokenizer.train(text, args.vocab_size)  # the public path, for its (near equal) wall time
    t_train_public = time.perf_counter() - t0

    plain = text.replace(ENDOFTEXT, "\n")  # what is encoded: separators as newlines
    n_plain_bytes = len(plain.encode("utf-8"))  # (the rates below are per byte of this text, not of `text`)
    t0 = time.perf_counter()
    ids = tok.encode(plain)
    t_enc = time.perf_counter() - t0

    sample = plain[:20_000]
    agree = tok.encode(sample) == naive_bpe_encode(sample, merges)

    rows = [
        ("text size (MB)", f"{n_bytes / 1e6:.2f}"),
        ("generation seconds", f"{t_gen:.2f}"),
        ("unique pre-tokens", f"{n_unique}"),
        ("pre-token counting seconds", f"{t_count:.2f}"),
        ("merges", f"{len(merges)}"),
        ("vocab size (n_vocab)", f"{tok.n_vocab}"),
        ("train_bpe seconds (incl. counting)", f"{t_train:.2f}"),
        ("Tokenizer.train seconds", f"{t_train_public:.2f}"),
        ("tokens", f"{len(ids)}"),
        ("encoded text size (MB)", f"{n_plain_bytes / 1e6:.2f}"),
        ("bytes / token", f"{n_plain_bytes / len(ids):.2f}"),
        ("encode MB/s (tiktoken, 1 thread)", f"{n_plain_bytes / 1e6 / t_enc:.1f}"),
        ("tiktoken == naive on 20 kB sample", f"{agree}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'metric':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:<{width}} | {v} |")


if __name__ == "__main__":
    main()
