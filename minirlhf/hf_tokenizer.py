"""A Hugging Face tokenizer folder -> our `Tokenizer`, refusing every setting that would encode differently.

How to use it (`minirlhf import-hf` calls it; so can you):
    from minirlhf.hf_tokenizer import load_hf_tokenizer
    tok = load_hf_tokenizer("path/to/gpt2")          # vocab.json + merges.txt, or tokenizer.json
    tok.encode("Hello world")                         # the ids transformers gives for the same text

What it reads, in order (`tokenizer="auto"`): our own `tokenizer.json` (a folder `export-hf` wrote), else
`vocab.json` + `merges.txt` (GPT-2's files, converted by `minirlhf.hf_bpe`), else a Hugging Face
`tokenizer.json` holding a byte-level BPE, else tiktoken's own GPT-2 encoding from its local cache when the
model has 50257 tokens (or always, with `tokenizer="gpt2"`). Ids are unchanged; added tokens come from
`tokenizer_config.json`'s added_tokens_decoder, the legacy `added_tokens.json` or tokenizer.json's
added_tokens, and must all be marked special.

Settings with which transformers would encode text differently from our tiktoken encoding of the same
vocabulary are refused with an error naming the file and the key, never ignored: `add_prefix_space: true`,
a `normalizer`, BPE dropout, subword affixes, an added token not marked `"special": true`. A file that is
not JSON, or a key of the wrong shape, is an error naming the file and the key as well.

Deliberate simplifications: byte-level BPE only (no WordPiece, Unigram or SentencePiece models); a
tokenizer.json's post-processor and decoder are not read (GPT-2's add nothing to the text).
"""

from __future__ import annotations

import json
import os

from minirlhf.tokenizer import Tokenizer


def read_json_object(file: str) -> dict:
    """A JSON file that must hold one object; not UTF-8, not JSON or not an object is a ValueError naming it."""
    try:
        with open(file, encoding="utf-8") as f:
            payload = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a valid JSON file ({e})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{file}: expected one JSON object, got {type(payload).__name__}")
    return payload


def _refuse_encoding_options(path: str, tokenizer_json: dict | None) -> None:
    """Refuse the Hugging Face tokenizer settings with which transformers would encode text differently from
    our tiktoken encoding of the same vocabulary; GPT-2's own files set none of them. They are
    `add_prefix_space: true` in tokenizer_config.json or in tokenizer.json's pre_tokenizer (a
    space is put before the text), a tokenizer.json `normalizer` (the text is rewritten first), a BPE
    `model.dropout` (merges skipped at random) or non-empty `model.continuing_subword_prefix` /
    `model.end_of_word_suffix` (affixes our byte-level BPE does not have), and an added token not marked
    `"special": true` in tokenizer_config.json's added_tokens_decoder or tokenizer.json's added_tokens, or
    listed in the legacy added_tokens.json without being marked special (transformers finds it in plain text
    as an ordinary word; our encoder never emits an added token: they are our control tokens, which enter a
    sequence only through the chat template)."""
    not_special = ("transformers finds a non-special added token in plain text as an ordinary word, our encoder "
                   'never does; only "special": true added tokens are supported')
    tc = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(tc):
        config = read_json_object(tc)
        if config.get("add_prefix_space"):
            raise ValueError(f"{tc}: key 'add_prefix_space' is {json.dumps(config['add_prefix_space'])}; transformers "
                             "would put a space before the text, which our encoder does not (set it to false)")
        for i, entry in _added_tokens_decoder(tc, config).items():
            if entry.get("special") is not True:
                raise ValueError(f"{tc}: added_tokens_decoder[{str(i)!r}] ({entry['content']!r}) is not "
                                 f'"special": true; {not_special}')
    at = os.path.join(path, "added_tokens.json")
    if os.path.isfile(at):  # transformers' legacy file: its tokens are non-special unless marked elsewhere
        legacy = _legacy_added_tokens(at)
        special = _marked_special(path)
        for text in legacy:
            if text not in special:
                raise ValueError(f"{at}: added token {text!r} is not marked special (in tokenizer_config.json's "
                                 f"added_tokens_decoder or special_tokens_map.json); {not_special}")
    if tokenizer_json is not None:
        tj = os.path.join(path, "tokenizer.json")
        normalizer = tokenizer_json.get("normalizer")
        if normalizer is not None:
            kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
            raise ValueError(f"{tj}: key 'normalizer' is set (type {kind!r}); transformers would rewrite the text "
                             "before encoding, which our encoder does not")
        if (tokenizer_json.get("pre_tokenizer") or {}).get("add_prefix_space"):
            raise ValueError(f"{tj}: key 'pre_tokenizer.add_prefix_space' is true; transformers would put a space "
                             "before the text, which our encoder does not (set it to false)")
        model = tokenizer_json.get("model") or {}
        if model.get("dropout") is not None:
            raise ValueError(f"{tj}: key 'model.dropout' is {model['dropout']!r}; with BPE dropout transformers skips "
                             "merges at random, which our encoder never does (set it to null)")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise ValueError(f"{tj}: key 'model.{key}' is {model[key]!r}; transformers would mark word pieces "
                                 "with it, which our byte-level BPE does not (set it to null or \"\")")
        for k, entry in enumerate(tokenizer_json.get("added_tokens") or []):
            if entry.get("special") is not True:
                raise ValueError(f"{tj}: added_tokens[{k}] ({entry.get('content')!r}) is not "
                                 f'"special": true; {not_special}')


def _marked_special(path: str) -> set[str]:
    """Token texts a folder marks special: `"special": true` entries of tokenizer_config.json's
    added_tokens_decoder, and the *_token / additional_special_tokens values of special_tokens_map.json and
    tokenizer_config.json (each a string or {"content": ...})."""
    def texts(value):
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [value["content"]] if isinstance(value.get("content"), str) else []
        if isinstance(value, list):
            return [t for v in value for t in texts(v)]
        return []

    special: set[str] = set()
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        config = read_json_object(file)
        for key, value in config.items():
            if key.endswith("_token") or key == "additional_special_tokens":
                special.update(texts(value))
        for entry in _added_tokens_decoder(file, config).values():
            if entry.get("special") is True:
                special.add(entry.get("content"))
    return special


def _added_tokens(path: str) -> dict[str, int]:
    """Added tokens (text -> id) from tokenizer_config.json's added_tokens_decoder and added_tokens.json."""
    added: dict[str, int] = {}
    tc = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(tc):
        for i, entry in _added_tokens_decoder(tc, read_json_object(tc)).items():
            added[entry["content"]] = i
    at = os.path.join(path, "added_tokens.json")
    if os.path.isfile(at):
        added.update(_legacy_added_tokens(at))
    return added


def _added_tokens_decoder(file: str, config: dict) -> dict[int, dict]:
    """tokenizer_config.json's added_tokens_decoder as {id: entry}: each key an id >= 0 written as a string,
    each entry an object with a string "content"; anything else is an error naming the file and the entry."""
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise ValueError(f"{file}: key 'added_tokens_decoder' must be an object mapping ids to tokens, got "
                         f"{type(decoder).__name__}")
    out = {}
    for i, entry in decoder.items():
        if not (i.isdigit() and isinstance(entry, dict) and isinstance(entry.get("content"), str)):
            raise ValueError(f"{file}: added_tokens_decoder[{i!r}] = {entry!r}; expected an id >= 0 mapped to an "
                             "object with a string 'content'")
        out[int(i)] = entry
    return out


def _legacy_added_tokens(file: str) -> dict[str, int]:
    """added_tokens.json ({token text: id >= 0}); anything else is an error naming the file and the entry."""
    added = read_json_object(file)
    for text, i in added.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"{file}: [{text!r}] = {i!r}; an id must be an int >= 0")
    return added


def _read_tokenizer_json(tj: str) -> dict:
    """A tokenizer.json as a dict. Not JSON, not one object, or a key read here of the wrong shape
    ('model' and 'pre_tokenizer' objects, 'added_tokens' a list of {"content": str, "id": int >= 0}) is an
    error naming the file and the key."""
    payload = read_json_object(tj)
    for key in ("model", "pre_tokenizer"):
        if not isinstance(payload.get(key) or {}, dict):
            raise ValueError(f"{tj}: key {key!r} must be an object, got {payload[key]!r}")
    added = payload.get("added_tokens") or []
    if not isinstance(added, list):
        raise ValueError(f"{tj}: key 'added_tokens' must be a list, got {type(added).__name__}")
    seen: dict[str, int] = {}  # content -> index in added_tokens
    for k, entry in enumerate(added):
        if not (isinstance(entry, dict) and isinstance(entry.get("content"), str) and isinstance(entry.get("id"), int)
                and not isinstance(entry["id"], bool) and entry["id"] >= 0):
            raise ValueError(f"{tj}: added_tokens[{k}] = {entry!r}; expected an object with a string 'content' and "
                             "an int 'id' >= 0")
        text = entry["content"]
        if text in seen:
            raise ValueError(f"{tj}: added_tokens[{k}] ({text!r}) repeats added_tokens[{seen[text]}]")
        seen[text] = k
    return payload


def _tokenizer_json_bpe(tj: str, model: dict) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """model.vocab (token -> int id >= 0) and model.merges of a tokenizer.json BPE; a merge is either
    "left right" (one space) or ["left", "right"], as transformers writes them (older / newer versions).
    A malformed entry is an error naming it (`<tj>: model.merges[k]`)."""
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{tj}: key 'model.vocab' missing or not an object mapping each token to its id")
    for text, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"{tj}: model.vocab[{text!r}] = {i!r}; an id must be an int >= 0")
    raw = model.get("merges", [])
    if not isinstance(raw, list):
        raise ValueError(f"{tj}: key 'model.merges' must be a list, got {type(raw).__name__}")
    merges = []
    for k, merge in enumerate(raw):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) and p for p in parts)):
            raise ValueError(f"{tj}: model.merges[{k}] = {merge!r}; expected two tokens, as \"left right\" (one "
                             'space) or ["left", "right"]')
        merges.append((parts[0], parts[1]))
    return vocab, merges


def load_hf_tokenizer(path: str, tokenizer: str = "auto", vocab_size: int | None = None) -> Tokenizer:
    """The folder's tokenizer as our Tokenizer (chat tokens it lacks get the next ids).

    tokenizer="auto": our own tokenizer.json, else vocab.json + merges.txt, else a Hugging Face
    tokenizer.json (byte-level BPE), else tiktoken's GPT-2 encoding when `vocab_size` is 50257.
    tokenizer="gpt2": tiktoken's GPT-2 encoding (local files only; see Tokenizer.gpt2).
    Hugging Face settings that would change the encoding are refused (see _refuse_encoding_options).
    """
    if tokenizer == "gpt2":
        return Tokenizer.gpt2()
    if tokenizer != "auto":
        raise ValueError(f"--tokenizer={tokenizer!r}: expected 'auto' or 'gpt2'")
    name = "hf-" + os.path.basename(os.path.normpath(path))
    tj = os.path.join(path, "tokenizer.json")
    payload = None
    if os.path.isfile(tj):
        payload = _read_tokenizer_json(tj)
        if payload.get("format") == "minirlhf-tokenizer":
            return Tokenizer.load(tj)
    _refuse_encoding_options(path, payload)
    vocab_path, merges_path = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if os.path.isfile(vocab_path) and os.path.isfile(merges_path):
        return Tokenizer.from_vocab_merges(vocab_path, merges_path, _added_tokens(path), name)
    if payload is not None:
        model, pre = payload.get("model") or {}, payload.get("pre_tokenizer") or {}
        if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
            raise ValueError(f"{tj}: not a GPT-2-style byte-level BPE (model {model.get('type')!r}, "
                             f"pre_tokenizer {pre.get('type')!r})")
        vocab, merges = _tokenizer_json_bpe(tj, model)
        added = {t["content"]: t["id"] for t in payload.get("added_tokens") or []}
        merge_where = [f"{tj}: model.merges[{k}]" for k in range(len(merges))]
        return Tokenizer.from_hf_bpe(vocab, merges, added, name, tj, merge_where)
    if vocab_size == 50257:
        return Tokenizer.gpt2()
    raise FileNotFoundError(f"{path}: no tokenizer files (vocab.json + merges.txt, or tokenizer.json); "
                            "pass --tokenizer=gpt2 to use tiktoken's local GPT-2 encoding")
