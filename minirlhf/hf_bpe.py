"""Hugging Face byte-level BPE files (GPT-2's ``vocab.json`` + ``merges.txt``) <-> tiktoken ranks.

What it does: ``read_hf_bpe`` reads the two files (a malformed entry is an error naming file and line),
``hf_bpe_to_ranks`` turns them into the mergeable ranks and special tokens that ``tiktoken`` (and so
``minirlhf.tokenizer.Tokenizer``) runs, ids unchanged, and ``ranks_to_hf_bpe`` is its inverse, used to
write our trained tokenizer in the format ``transformers`` loads. Bytes appear in those files as
visible characters through GPT-2's ``bytes_to_unicode`` map.

How to use it (normally through ``Tokenizer.from_vocab_merges`` / ``Tokenizer.save_vocab_merges``):
    vocab, merges, merge_where = read_hf_bpe("gpt2/vocab.json", "gpt2/merges.txt")
    ranks, specials = hf_bpe_to_ranks(vocab, merges, "gpt2/vocab.json", merge_where, {"<|endoftext|>"})
    vocab_again, merges_again = ranks_to_hf_bpe(ranks, specials)

Deliberate simplifications: byte-level BPE only (no WordPiece, no SentencePiece); a file that tiktoken
would encode differently from Hugging Face (merged-token ids that do not increase down merges.txt, or a
merge that tiktoken's BPE would not make) is refused rather than re-ranked (see ``hf_bpe_to_ranks``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Collection, Sequence


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character map, used to write byte tokens as text in vocab.json / merges.txt.

    The 188 bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves;
    the other 68 (control bytes, space, DEL, no-break space, soft hyphen) map in byte order to chr(256),
    chr(257), ... So every token is a string of visible characters without spaces (a space is 'Ġ',
    a newline 'Ċ'), and merges.txt can separate the two halves of a merge with one space.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return mapping


def _bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE on `token` using only ranks below `max_rank`: merge the adjacent pair whose
    concatenation has the lowest rank (leftmost on ties) until none is left."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_rank, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def hf_bpe_to_ranks(vocab: dict[str, int], merges: Sequence[tuple[str, str]], source: str = "vocab.json",
                    merge_where: Sequence[str] | None = None, declared_specials: Collection[str] = ()
                    ) -> tuple[dict[bytes, int], dict[str, int]]:
    """A Hugging Face byte-level BPE (vocab.json + merges.txt) -> (tiktoken mergeable ranks, special tokens).

    Ids never change: a token's tiktoken rank IS its vocab.json id (the model's embedding row). tiktoken
    merges ANY adjacent pair whose concatenation is a token, lowest rank first; Hugging Face merges only
    the pairs listed in merges.txt, earliest first. The two split every word alike when (1) the ids of
    the merged tokens increase down merges.txt and (2) each merge (left, right) -> token is the last step
    of tiktoken's own BPE of the token's bytes with the lower ids (``_bpe_split``, the rule by which
    ``ranks_to_hf_bpe`` writes merges). GPT-2's files (merge i creates id 256 + i) and every file that
    ``ranks_to_hf_bpe`` writes satisfy both. Both are checked, and a merge that breaks either is an error
    naming where it was read (``merge_where[i]``, e.g. "merges.txt:5"; default "<source>: merge <i + 1>")
    rather than a tokenizer that silently differs. E.g. merges ``a b``, ``b c``, ``a bc`` break (2):
    tiktoken builds "abc" as ``ab`` + ``c``, a pair Hugging Face never merges.
    Entries that are neither single bytes nor made by a merge become special tokens under their own string
    if they are in ``declared_specials`` (e.g. ``<|endoftext|>``, or added tokens marked special) or have a
    character outside the byte alphabet. Any other such entry is an error naming it: transformers reads it
    as the bytes its characters stand for (``Ġthe`` is " the"), an ordinary token that no merge reaches,
    e.g. because merges.txt was cut short, so it cannot be a special token under its literal text.
    """
    to_text = bytes_to_unicode()
    char_to_byte = {c: b for b, c in to_text.items()}

    def to_bytes(text: str) -> bytes:
        try:
            return bytes(char_to_byte[c] for c in text)
        except KeyError as e:
            raise ValueError(f"{source}: token {text!r} has the character {e.args[0]!r}, outside GPT-2's byte "
                             "alphabet: not a byte-level BPE vocabulary") from None

    owner: dict[int, str] = {}  # id -> token
    for text, i in vocab.items():
        if i in owner:
            raise ValueError(f"{source}: tokens {owner[i]!r} and {text!r} share the id {i}; every id must appear once")
        owner[i] = text
    missing = [b for b, c in bytes_to_unicode().items() if c not in vocab]
    if missing:
        raise ValueError(f"{source}: no token for the single bytes {missing[:8]}{'...' if len(missing) > 8 else ''}; "
                         "a byte-level BPE needs all 256 so that any text can be encoded")

    def at(i: int) -> str:  # where merge i was read
        return merge_where[i] if merge_where else f"{source}: merge {i + 1}"

    ranks = {bytes([b]): vocab[c] for b, c in bytes_to_unicode().items()}
    made: dict[str, int] = {}  # token -> index of the merge that creates it
    last_id = -1
    for i, (left, right) in enumerate(merges):
        where = f"{at(i)} ({left} {right})"
        for part in (left, right):
            if part not in vocab:
                raise ValueError(f"{where}: {part!r} is not in the vocabulary")
        token = left + right
        if token not in vocab:
            raise ValueError(f"{where}: the merged token {token!r} is not in the vocabulary")
        if token in made:
            raise ValueError(f"{where}: creates {token!r}, which {at(made[token])} already creates")
        if vocab[token] <= last_id:
            raise ValueError(f"{where}: creates id {vocab[token]}, not above the previous merge's id {last_id}; "
                             "tiktoken ranks merges by token id, so merged-token ids must increase down the merges")
        made[token] = i
        last_id = vocab[token]
        token_bytes = to_bytes(token)
        ranks[token_bytes] = vocab[token]
        # every multi-byte token with a lower id came from an earlier merge (ids increase), so is in `ranks`
        steps = _bpe_split(ranks, token_bytes, vocab[token])
        if steps != [to_bytes(left), to_bytes(right)]:
            shown = " ".join("".join(to_text[b] for b in part) for part in steps)
            raise ValueError(f"{where}: tiktoken's BPE of {token!r} with the lower ids ends at {shown}, not at "
                             f"{left} {right}; tiktoken merges any adjacent pair that forms a token, Hugging Face "
                             "only the listed pairs, so the two would encode text containing it differently")
    byte_chars = set(bytes_to_unicode().values())
    specials = {}
    for text, i in vocab.items():
        if text in made or text in byte_chars:
            continue
        if text not in declared_specials and set(text) <= byte_chars:
            raise ValueError(f"{source}: token {text!r} (id {i}) stands for the bytes {to_bytes(text)!r} but no merge "
                             "creates it (merges cut short?) and it is not declared special; a special token must be "
                             "an added token marked special or have a character outside GPT-2's byte alphabet")
        specials[text] = i
    return ranks, specials


def ranks_to_hf_bpe(ranks: dict[bytes, int], special_tokens: dict[str, int]
                    ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks + special tokens -> (vocab.json dict, merges.txt pairs), the inverse of ``hf_bpe_to_ranks``.

    A multi-byte token of rank r becomes the merge of the two pieces that tiktoken's BPE, run on the
    token's bytes with only the ranks below r, ends with: exactly the step by which tiktoken itself
    builds the token, so Hugging Face's BPE makes the same choices. Merges are listed in rank order.
    """
    to_text = bytes_to_unicode()
    vocab = {"".join(to_text[b] for b in token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _bpe_split(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (id {rank}) is not one merge of two lower-ranked tokens (BPE stops at "
                             f"{parts!r}); it has no merges.txt equivalent")
        merges.append(tuple("".join(to_text[b] for b in p) for p in parts))
    for text, i in special_tokens.items():
        if text in vocab:
            raise ValueError(f"special token {text!r} has the same text as an ordinary BPE token in vocab.json")
        vocab[text] = i
    return dict(sorted(vocab.items(), key=lambda kv: kv[1])), merges


def read_hf_bpe(vocab_path: str | os.PathLike, merges_path: str | os.PathLike
                ) -> tuple[dict[str, int], list[tuple[str, str]], list[str]]:
    """Read vocab.json (token -> id) and merges.txt ("left right" per line, an optional first line
    ``#version: ...``, empty lines skipped); a malformed entry is an error naming the file and the line.

    Returns (vocab, merges, merge_where), merge_where[i] = "<merges_path>:<line>" of merges[i]."""
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{vocab_path}: not a valid JSON file ({e})") from None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                              for i in vocab.values()):
        raise ValueError(f"{vocab_path}: expected one JSON object mapping each token to its id (an int >= 0)")
    try:
        merges_text = merges_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = merges_path.read_bytes().count(b"\n", 0, e.start) + 1
        raise ValueError(f"{merges_path}:{line}: not UTF-8 text ({e})") from None
    merges, merge_where = [], []
    for n, line in enumerate(merges_text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{merges_path}:{n}: expected two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
        merge_where.append(f"{merges_path}:{n}")
    return vocab, merges, merge_where
