"""Byte-level BPE tokenizer: trained here in Python, run by ``tiktoken``.

What it does
------------
* ``train_bpe`` learns byte-level BPE merges (Sennrich et al. 2016, "Neural Machine Translation of Rare
  Words with Subword Units", Algorithm 1; byte-level as in GPT-2, Radford et al. 2019, section 2.2)
  from a text corpus. The corpus is first split into pre-tokens with the GPT-2 regex, so merges never
  cross a word/space/punctuation boundary.
* ``Tokenizer`` wraps a ``tiktoken.Encoding`` built from the learned merges (rank of a token = the
  index of the merge that created it, after the 256 single bytes), so encoding runs in tiktoken's
  Rust BPE. ``Tokenizer.gpt2()`` gives OpenAI's GPT-2 vocabulary instead, when its files are cached
  locally (nothing is ever downloaded).
* ``Tokenizer.from_vocab_merges`` reads a Hugging Face GPT-2 tokenizer (``vocab.json`` + ``merges.txt``)
  into tiktoken ranks, ids unchanged; ``Tokenizer.save_vocab_merges`` writes ours in that format (used by
  ``minirlhf.hf``). The file format and its conversion live in ``minirlhf.hf_bpe``.
* The chat template built on these ids (``render_conversation``, ``render_prompt``, ``render_reply``)
  lives in ``minirlhf.chat``.

How to use it
-------------
    tok = Tokenizer.train(corpus_text, vocab_size=2048)   # 256 bytes + 1787 merges + 5 specials
    tok.save("out/tiny/tokenizer/tokenizer.json")
    tok = Tokenizer.load("out/tiny/tokenizer/tokenizer.json")
    tok.encode("The capital of France is Paris.")   # plain text -> ids, never a control token

``encode`` ALWAYS treats its input as plain text: the string ``"<|end|>"`` typed by a user becomes
ordinary bytes, never the control token. Control tokens enter a sequence only through the chat
template's render functions (``minirlhf.chat``) or by using the ``*_id`` attributes directly.

Deliberate simplifications
--------------------------
* Training is pure Python. It is fast enough for a few MB of text because pair counts are updated
  incrementally: after each merge only the words that contain the merged pair are touched (an index
  pair -> word ids), and the most frequent pair comes from a lazy max-heap. Ties go to the highest
  count, then the lexicographically smallest ``(left bytes, right bytes)``, so training is
  deterministic.
* A merge whose result already exists as a token (possible only in odd corner cases, e.g. runs of one
  repeated character) is skipped, so every token has exactly one rank.
* ``naive_bpe_encode`` is the slow, obviously-correct reference used only by tests.
* Training pre-tokenises with Python's ``regex`` module, encoding with tiktoken's Rust regex. They agree
  except on code points assigned in very recent Unicode versions (e.g. U+3D000), which ``regex`` may
  already class as letters; such text still round-trips exactly, it just may use different merges.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import os
import re
import tempfile
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import regex
import tiktoken

from minirlhf.data import write_bytes_atomic
from minirlhf.hf_bpe import hf_bpe_to_ranks, ranks_to_hf_bpe, read_hf_bpe

# ----------------------------------------------------------------------------------------------------
# Constants

ENDOFTEXT = "<|endoftext|>"  # separates pretraining documents
USER = "<|user|>"  # opens a user turn
ASSISTANT = "<|assistant|>"  # opens an assistant turn
END = "<|end|>"  # closes a turn; the EOS a policy must emit
PAD = "<|pad|>"  # padding only, never equal to END
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, USER, ASSISTANT, END, PAD)

# The GPT-2 pre-tokenisation regex exactly as tiktoken's "gpt2" / "r50k_base" encodings spell it
# (the original GPT-2 pattern rewritten with possessive quantifiers; same splits, faster).
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)

# Where tiktoken fetches GPT-2's BPE files from, and their sha256 (tiktoken_ext/openai_public.py).
# tiktoken caches a download under <cache dir>/<sha1 of the URL>; we only ever read that cache.
_GPT2_FILES = {
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}

_SAVE_FORMAT = "minirlhf-tokenizer"
_SAVE_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# Training


@lru_cache(maxsize=8)
def _compile(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


_SPECIAL_SPLIT = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))
_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no UTF-8 bytes


def _refuse_surrogates(text: str, where: str) -> None:
    """A lone surrogate (json.loads makes one from "\\ud83d") has no UTF-8 bytes: an error naming its index."""
    found = _SURROGATE.search(text)
    if found:
        raise ValueError(f"{where}: text[{found.start()}] is {found.group()!r}, a lone surrogate (half of a UTF-16 "
                         "pair), which has no UTF-8 encoding")


# Characters of many kinds (ASCII, whitespace runs, accents, CJK, Arabic digits, emoji, a combining mark,
# no-break and zero-width spaces, a special token's string) that any pre-tokenisation pattern must cover.
_PATTERN_PROBE = ("".join(map(chr, range(32, 127))) + " \t\n\r\x0b\x0c  \n\n\t x\u00a0y\u200bz caf\u00e9 "
                  "e\u0301 Stra\u00dfe \u4e2d\u6587 \u0661\u0662 \U0001f642!! 3.14 don't <|end|>\n")


def _pattern_gap(pattern: str, text: str) -> str:
    """Where ``pattern``'s pre-tokens leave ``text`` uncovered or match "": a phrase for an error, or ""."""
    pos = 0
    for m in _compile(pattern).finditer(text):
        if m.start() > pos:
            return f"covers no pre-token at text[{pos}:{m.start()}] = {text[pos:m.start()][:20]!r}"
        if m.end() == m.start():
            return f"matches the empty string at text[{pos}] (before {text[pos:pos + 10]!r})"
        pos = m.end()
    if pos < len(text):
        return f"covers no pre-token at text[{pos}:] = {text[pos:][:20]!r}"
    return ""


def _count_pretokens(text: str, pattern: str) -> Counter[bytes]:
    """Frequency of every pre-token (as UTF-8 bytes); special-token strings act as hard boundaries."""
    pat = _compile(pattern)
    counts: Counter[str] = Counter()
    for chunk in _SPECIAL_SPLIT.split(text):  # documents separated by <|endoftext|> etc.
        counts.update(pat.findall(chunk))
    return Counter({piece.encode("utf-8"): n for piece, n in counts.items()})


def _merge_word(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of the pair (a, b), left to right, by new_id."""
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(text: str, n_merges: int, pattern: str = GPT2_SPLIT_PATTERN) -> list[tuple[bytes, bytes]]:
    """Learn up to ``n_merges`` byte-level BPE merges from ``text``; returns them in merge order.

    Sennrich et al. 2016, Algorithm 1, on unique pre-tokens weighted by their frequency. Each step
    merges the most frequent adjacent pair (ties: smallest ``(left, right)`` bytes) into a new token.
    Fewer merges are returned only if the corpus runs out of pairs. Special-token strings in ``text``
    (e.g. ``<|endoftext|>`` between documents) are treated as boundaries and never learned. A lone
    surrogate in ``text`` is a ValueError naming its index.
    """
    if not isinstance(text, str):
        raise TypeError(f"train_bpe: text must be str, got {type(text).__name__}")
    _refuse_surrogates(text, "train_bpe")
    if n_merges < 0:
        raise ValueError(f"train_bpe: n_merges must be >= 0, got {n_merges}")

    word_counts = _count_pretokens(text, pattern)
    words: list[list[int]] = [list(w) for w in word_counts]  # token ids; ids 0..255 are the bytes
    freqs: list[int] = list(word_counts.values())
    vocab: list[bytes] = [bytes([i]) for i in range(256)]  # token id -> bytes
    known: set[bytes] = set(vocab)

    # pair -> weighted count, and pair -> ids of the words that (may) contain it. The index can hold
    # stale word ids after a merge; those are harmless (merging such a word changes nothing).
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wid, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(wid)

    # Lazy max-heap: an entry is valid only while its count equals pair_counts[pair].
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    skipped: set[tuple[int, int]] = set()  # pairs whose result already exists as a token

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < n_merges and heap:
        neg_count, left, right, a, b = heapq.heappop(heap)
        pair = (a, b)
        if pair_counts.get(pair, 0) != -neg_count or pair in skipped:
            continue  # stale entry
        if left + right in known:
            skipped.add(pair)  # keep ranks unique: never create a second token with the same bytes
            continue

        new_id = len(vocab)
        vocab.append(left + right)
        known.add(left + right)
        merges.append((left, right))

        # Update counts only for the words that contain the pair.
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for wid in where.pop(pair):
            word = words[wid]
            new_word = _merge_word(word, a, b, new_id)
            if len(new_word) == len(word):
                continue  # stale index entry
            freq = freqs[wid]
            for p in zip(word, word[1:]):
                delta[p] -= freq
            for p in zip(new_word, new_word[1:]):
                delta[p] += freq
                where[p].add(wid)
            words[wid] = new_word
        for p, d in delta.items():
            if d == 0:
                continue
            c = pair_counts[p] + d
            if c > 0:
                pair_counts[p] = c
                if p not in skipped:
                    heapq.heappush(heap, (-c, vocab[p[0]], vocab[p[1]], p[0], p[1]))
            else:
                del pair_counts[p]
                where.pop(p, None)
        pair_counts.pop(pair, None)
    return merges


def merges_to_ranks(merges: Sequence[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """tiktoken's ``mergeable_ranks``: single bytes at ranks 0..255, merge i's result at 256 + i."""
    ranks = {bytes([i]): i for i in range(256)}
    for i, (left, right) in enumerate(merges):
        token = left + right
        if left not in ranks or right not in ranks:
            raise ValueError(f"merge {i} ({left!r}, {right!r}) uses a token that no earlier merge created")
        if token in ranks:
            raise ValueError(f"merge {i} ({left!r}, {right!r}) recreates existing token {token!r}")
        ranks[token] = 256 + i
    return ranks


def naive_bpe_encode(
    text: str, merges: Sequence[tuple[bytes, bytes]], pattern: str = GPT2_SPLIT_PATTERN
) -> list[int]:
    """Slow reference encoder (tests only): per pre-token, apply merges in merge order.

    Within a pre-token, repeatedly find the adjacent pair with the lowest merge index and merge all its
    occurrences left to right, until no adjacent pair is a merge. Plain text only (no special tokens).
    """
    ranks = merges_to_ranks(merges)
    merge_index = {pair: i for i, pair in enumerate(merges)}
    ids: list[int] = []
    for piece in _compile(pattern).findall(text):
        parts = [bytes([byte]) for byte in piece.encode("utf-8")]
        while len(parts) > 1:
            candidates = [merge_index.get(pair) for pair in zip(parts, parts[1:])]
            best = min((i for i in candidates if i is not None), default=None)
            if best is None:
                break
            left, right = merges[best]
            merged: list[bytes] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids.extend(ranks[p] for p in parts)
    return ids


# ----------------------------------------------------------------------------------------------------
# Tokenizer


class Tokenizer:
    """A ``tiktoken.Encoding`` plus the ids of the five chat/control tokens.

    ``mergeable_ranks`` maps token bytes to ids; the special tokens get the given ids (by default the
    ids right after the largest rank, in ``SPECIAL_TOKENS`` order). Together they must use every id
    0..n_vocab-1 exactly once (tiktoken cannot decode an id that no token has). ``mergeable_ranks`` must
    hold all 256 single bytes and no empty token, and ``pattern`` must cover all text with non-empty pre-tokens
    (tiktoken would accept them and then panic at encode, or silently encode differently, or drop the
    uncovered characters); anything else is refused. A pattern is tried on a test text of many scripts
    here, and ``encode`` checks again on each text that the ids hold all of its bytes.
    """

    def __init__(
        self,
        name: str,
        pattern: str,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
    ):
        # checked here because tiktoken accepts both, then panics (a Rust PanicException, not an error) at the
        # first encode that needs a missing byte, or silently changes the encoding around an empty token
        no_byte = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if no_byte:
            raise ValueError(f"tokenizer {name!r}: mergeable_ranks has no token for the single bytes "
                             f"{no_byte[:8]}{'...' if len(no_byte) > 8 else ''}; a byte-level BPE needs all 256 "
                             "so that any text can be encoded")
        if b"" in mergeable_ranks:
            raise ValueError(f"tokenizer {name!r}: mergeable_ranks holds an empty token (0 bytes, rank "
                             f"{mergeable_ranks[b'']}); every token must have at least one byte")
        if special_tokens is None:
            first = max(mergeable_ranks.values()) + 1
            special_tokens = {s: first + i for i, s in enumerate(SPECIAL_TOKENS)}
        missing = [s for s in SPECIAL_TOKENS if s not in special_tokens]
        if missing:
            raise ValueError(f"tokenizer {name!r}: special_tokens lacks {missing}")
        taken = set(mergeable_ranks.values())
        clash = {s: i for s, i in special_tokens.items() if i in taken}
        if clash:
            raise ValueError(f"tokenizer {name!r}: special token ids {clash} collide with mergeable ranks")
        if len(set(special_tokens.values())) != len(special_tokens):
            raise ValueError(f"tokenizer {name!r}: special token ids are not unique: {special_tokens}")
        # every id 0..n-1 exactly once; special tokens usually come last, but an imported Hugging Face
        # vocabulary may hold one anywhere (e.g. <|endoftext|> at id 0)
        n = len(mergeable_ranks) + len(special_tokens)
        unused = sorted(set(range(n)) - {*mergeable_ranks.values(), *special_tokens.values()})
        if unused:
            raise ValueError(f"tokenizer {name!r}: mergeable ranks and special tokens together must be the ids "
                             f"0..{n - 1}, each once; no token has id {unused[:8]}{'...' if len(unused) > 8 else ''}")
        self.name = name
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self._ranks = mergeable_ranks
        self.enc = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens
        )
        # after tiktoken has checked the syntax: a pre-token that may be empty makes tiktoken panic at encode,
        # and text that no pre-token covers is dropped without a word (encode checks both again on real text)
        if _compile(pattern).fullmatch("") is not None:
            raise ValueError(f"tokenizer {name!r}: the pre-tokenisation pattern {pattern!r} matches the empty "
                             "string; every pre-token must hold at least one character")
        problem = _pattern_gap(pattern, _PATTERN_PROBE)
        if problem:
            raise ValueError(f"tokenizer {name!r}: the pre-tokenisation pattern {pattern!r} {problem} of a test "
                             "text; its pre-tokens must cover every character, each with at least one")
        self._token_bytes = [0] * self.enc.n_vocab  # id -> its length in UTF-8 bytes (encode's coverage check)
        for token, i in mergeable_ranks.items():
            self._token_bytes[i] = len(token)
        self.eot_id = self.special_tokens[ENDOFTEXT]
        self.user_id = self.special_tokens[USER]
        self.assistant_id = self.special_tokens[ASSISTANT]
        self.end_id = self.special_tokens[END]
        self.pad_id = self.special_tokens[PAD]

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab})"

    @property
    def n_vocab(self) -> int:
        """Number of token ids (mergeable ranks + special tokens); the model's embedding rows."""
        return self.enc.n_vocab

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """The BPE table, token bytes -> id, without the special tokens (what tiktoken's Encoding is built from)."""
        return self._ranks

    # --- encode / decode ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Special-token strings in ``text`` are encoded as ordinary bytes. A lone
        surrogate is a ValueError naming its index (tiktoken would silently encode U+FFFD instead)."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode: expected str, got {type(text).__name__}")
        _refuse_surrogates(text, "Tokenizer.encode")
        try:
            ids = self.enc.encode_ordinary(text)
        except BaseException as e:  # tiktoken's Rust panic derives from BaseException, not Exception
            if type(e).__name__ != "PanicException":
                raise
            raise ValueError(f"Tokenizer.encode: tiktoken panicked on this text ({e}): the pre-tokenisation pattern "
                             f"{self.pattern!r} of tokenizer {self.name!r} "
                             f"{_pattern_gap(self.pattern, text) or 'may match the empty string here'}") from None
        # tiktoken encodes only what the pattern matches: the ids must hold every byte of the text
        if sum(map(self._token_bytes.__getitem__, ids)) != len(text.encode("utf-8")):
            raise ValueError(f"Tokenizer.encode: the pre-tokenisation pattern {self.pattern!r} of tokenizer "
                             f"{self.name!r} {_pattern_gap(self.pattern, text) or 'does not cover the text'}; "
                             "tiktoken encodes only what the pattern matches, so those characters would be lost")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text. Control tokens decode to their strings; invalid UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids]  # accepts lists, numpy arrays, 1-D tensors
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            raise ValueError(f"Tokenizer.decode: ids {bad[:5]} outside [0, {self.n_vocab})")
        return self.enc.decode(ids)

    # --- persistence -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write one JSON file (name, pattern, base64 ranks, special tokens) atomically; returns its path.

        ``path`` is the file to write, or an existing directory (then ``<dir>/tokenizer.json``).
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        ranks = sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
        payload = {
            "format": _SAVE_FORMAT,
            "version": _SAVE_VERSION,
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "mergeable_ranks": [[base64.b64encode(tok).decode("ascii"), rank] for tok, rank in ranks],
        }
        write_bytes_atomic(path, json.dumps(payload).encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a file written by ``save`` (or a directory holding ``tokenizer.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found (train one with Tokenizer.train)")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid tokenizer JSON file ({e})") from None
        if not isinstance(payload, dict) or payload.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path}: key 'format' must be {_SAVE_FORMAT!r}; not a minirlhf tokenizer file")
        if payload.get("version") != _SAVE_VERSION:
            raise ValueError(f"{path}: key 'version' is {payload.get('version')!r}, expected {_SAVE_VERSION}")
        for key, typ in (("name", str), ("pattern", str), ("special_tokens", dict), ("mergeable_ranks", list)):
            if not isinstance(payload.get(key), typ):
                raise ValueError(f"{path}: key {key!r} missing or not a {typ.__name__}")
        ranks: dict[bytes, int] = {}
        for k, entry in enumerate(payload["mergeable_ranks"]):
            try:
                b64, rank = entry
                token = base64.b64decode(b64, validate=True)
                if not isinstance(rank, int) or isinstance(rank, bool):
                    raise TypeError("rank is not an int")
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: mergeable_ranks[{k}] = {entry!r} is malformed ({e})") from None
            if not token:
                raise ValueError(f"{path}: mergeable_ranks[{k}] = {entry!r}: the token is empty (0 bytes)")
            if token in ranks:
                raise ValueError(f"{path}: mergeable_ranks[{k}]: token {token!r} appears twice")
            ranks[token] = rank
        specials = payload["special_tokens"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in specials.values()):
            raise ValueError(f"{path}: key 'special_tokens' must map strings to int ids")
        try:  # also checks that the ids are 0..n-1, each once
            return cls(payload["name"], payload["pattern"], ranks, specials)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # --- constructors ------------------------------------------------------------------------------

    @classmethod
    def train(cls, text: str, vocab_size: int, name: str | None = None) -> "Tokenizer":
        """Train a byte-level BPE on ``text``; ``vocab_size`` = 256 bytes + merges + 5 special tokens."""
        n_special = len(SPECIAL_TOKENS)
        if not isinstance(vocab_size, int) or vocab_size < 256 + n_special:
            raise ValueError(
                f"vocab_size must be an int >= {256 + n_special} (256 bytes + {n_special} special tokens), "
                f"got {vocab_size!r}"
            )
        n_merges = vocab_size - 256 - n_special
        merges = train_bpe(text, n_merges)
        if len(merges) < n_merges:
            raise ValueError(
                f"vocab_size={vocab_size} needs {n_merges} merges but the training text "
                f"({len(text)} characters) only supports {len(merges)}: use more text or "
                f"vocab_size <= {256 + len(merges) + n_special}"
            )
        return cls(name or f"minirlhf-bpe-{vocab_size}", GPT2_SPLIT_PATTERN, merges_to_ranks(merges))

    @classmethod
    def gpt2(cls) -> "Tokenizer":
        """OpenAI's GPT-2 vocabulary (ids 0..50256, ``<|endoftext|>`` = 50256) + our 4 chat tokens.

        Uses tiktoken's ``gpt2`` encoding only if its two files are already in tiktoken's cache
        (``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``); it never
        downloads. Otherwise raises ``RuntimeError`` saying which files to put where.
        """
        cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
        if cache_dir is None:
            cache_dir = os.environ.get("DATA_GYM_CACHE_DIR")
        if cache_dir is None:
            cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
        problems = []
        for fname, (url, sha256) in _GPT2_FILES.items():
            cached = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()) if cache_dir else ""
            if not cached or not os.path.isfile(cached):
                problems.append(f"  {fname} (from {url}) -> {cached or '<caching disabled>'} [missing]")
            elif hashlib.sha256(Path(cached).read_bytes()).hexdigest() != sha256:
                problems.append(f"  {fname} (from {url}) -> {cached} [wrong sha256]")
        if problems:
            raise RuntimeError(
                "GPT-2 tokenizer files are not available locally and minirlhf never downloads at run time.\n"
                f"tiktoken's cache dir is {cache_dir!r} (set TIKTOKEN_CACHE_DIR to change it). "
                "Copy each file there under the name shown (the sha1 of its URL), e.g. from a machine with "
                "network access run `python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"` with the "
                "same TIKTOKEN_CACHE_DIR and copy the folder:\n" + "\n".join(problems)
            )
        try:
            from tiktoken_ext.openai_public import gpt2 as gpt2_spec  # reads the cached files only

            spec = gpt2_spec()
        except Exception as e:  # files were checked above; anything else is unexpected
            raise RuntimeError(f"tiktoken could not build the gpt2 encoding from {cache_dir!r}: {e}") from e
        ranks = spec["mergeable_ranks"]
        eot = spec["special_tokens"][ENDOFTEXT]  # 50256
        first = max(max(ranks.values()), eot) + 1  # 50257
        specials = {ENDOFTEXT: eot, **{s: first + i for i, s in enumerate(SPECIAL_TOKENS[1:])}}
        return cls("gpt2-chat", spec["pat_str"], ranks, specials)

    @classmethod
    def from_hf_bpe(cls, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                    added_tokens: dict[str, int] | None = None, name: str = "hf-bpe",
                    source: str = "vocab.json", merge_where: Sequence[str] | None = None) -> "Tokenizer":
        """A Hugging Face byte-level BPE (see ``hf_bpe_to_ranks``) plus our chat tokens.

        ``added_tokens`` (text -> id) are extra special tokens from tokenizer_config.json / tokenizer.json.
        Control tokens the vocabulary lacks (usually all but ``<|endoftext|>``) get the next free ids, in
        ``SPECIAL_TOKENS`` order, after the largest existing id: a model using this tokenizer needs that
        many new embedding rows (``minirlhf.hf`` adds them). The ids must then run 0..n-1 without a gap
        (checked by ``Tokenizer``; an error names ``source``).
        """
        # our control tokens and the given added tokens may be specials spelled in the byte alphabet
        declared = {*SPECIAL_TOKENS, *(added_tokens or {})}
        ranks, specials = hf_bpe_to_ranks(vocab, merges, source, merge_where, declared)
        owner = {i: text for text, i in vocab.items()}
        for text, i in (added_tokens or {}).items():
            if text in vocab and text not in specials:
                raise ValueError(f"{source}: added token {text!r} (id {i!r}) is an ordinary BPE token with id "
                                 f"{vocab[text]} in the vocabulary")
            if text in vocab and vocab[text] != i:
                raise ValueError(f"{source}: added token {text!r} has id {i!r}, but the vocabulary gives it id "
                                 f"{vocab[text]}")
            if text not in vocab and i in owner:
                raise ValueError(f"{source}: added token {text!r} has id {i}, which belongs to {owner[i]!r}")
            specials[text] = i
        clash = [s for s in SPECIAL_TOKENS if s in vocab and s not in specials]
        if clash:
            raise ValueError(f"{source}: {clash[0]!r} is an ordinary BPE token there; minirlhf needs it as a "
                             "control token")
        next_id = max([*ranks.values(), *specials.values()]) + 1
        for s in SPECIAL_TOKENS:
            if s not in specials:
                specials[s] = next_id
                next_id += 1
        try:
            return cls(name, GPT2_SPLIT_PATTERN, ranks, specials)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_vocab_merges(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike,
                          added_tokens: dict[str, int] | None = None, name: str = "hf-bpe") -> "Tokenizer":
        """``from_hf_bpe`` on the two files of a Hugging Face GPT-2 tokenizer."""
        vocab, merges, merge_where = read_hf_bpe(vocab_path, merges_path)
        return cls.from_hf_bpe(vocab, merges, added_tokens, name, str(vocab_path), merge_where)

    def save_vocab_merges(self, folder: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``vocab.json`` and ``merges.txt`` (GPT-2's format, special tokens in vocab.json) into `folder`."""
        vocab, merges = ranks_to_hf_bpe(self.mergeable_ranks, self.special_tokens)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return vocab_path, merges_path
