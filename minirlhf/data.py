"""Read and write the JSONL data files of every stage, validating each line.

The formats are the Hugging Face TRL conventions, so users can bring their own files:

    pretraining   {"text": str}                 or a plain-text file, documents split by <|endoftext|>
    SFT           {"prompt": str, "completion": str}
                  {"prompt": [messages], "completion": [messages]}
                  {"messages": [messages]}
    preferences   {"prompt": str|[messages], "chosen": str|[msg], "rejected": str|[msg], ...extra}
                  {"chosen": [messages], "rejected": [messages], ...}   (implicit shared prompt)
    KTO           {"prompt": str|[messages], "completion": str|[msg], "label": true|false, ...extra}
    RL prompts    {"prompt": str|[messages]}

A message is {"role": "system"|"user"|"assistant", "content": str}. Every reader returns prompts
and conversations as message lists, so the chat renderer (minirlhf/chat.py) sees one shape.
Preference and KTO rows also carry "line", their 1-based line in the file, so that a stage that
rejects a row later (too long for the context, a bad annotation) can name `{path}:{line}`.

Usage:

    from minirlhf.data import read_preferences, DataError
    rows = read_preferences("prefs.jsonl")          # [{"prompt": [...], "chosen": str, ..., "line": 1}, ...]
    report = {}
    rows = read_preferences("prefs.jsonl", on_identical="drop", report=report)
    print(report["dropped_identical"])

Errors: every problem raises `DataError` whose message starts with `{path}:{line}: ` (1-based line
number) or `{path}: ` for whole-file problems, then says what is wrong and what was expected, e.g.
`prefs.jsonl:7: key "chosen" must be a non-empty string, got int`. The first bad line stops the read:
nothing is ever skipped silently. The only rows a reader drops or changes are those the caller asked
for (`on_identical="drop"`, `truncate=True`), and those are counted in the `report` dict.

Prompt length: readers that return prompts take `tokenizer`, `max_prompt_tokens` and `truncate`.
The length of a prompt is counted as the rendered generation prompt
`<|user|>{text}<|end|>...<|assistant|>`: the tokens of each message's content, plus 2 per message
(its role tag and `<|end|>`), plus 1 for the trailing `<|assistant|>` tag. Only `tokenizer.encode(str)`
is used, so any object with that method works. Too long is an error naming the line unless
`truncate=True`, which left-truncates (see `truncate_prompt`) and counts the prompt in
`report["truncated_prompts"]`.

Deliberate simplifications: the whole file is read into memory; the first error stops the read
(one clear message rather than a list); a message may carry only "role" and "content" (no tool calls);
whitespace-only strings count as empty; SFT conversations are not length-checked here (the trainer
sees their full token length after rendering).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Protocol

ENDOFTEXT = "<|endoftext|>"  # same string as minirlhf.tokenizer.ENDOFTEXT; documents' separator
ROLES = ("system", "user", "assistant")
TOKENS_PER_MESSAGE = 2  # the role tag (<|user|> / <|assistant|>) and <|end|>
GENERATION_TAG_TOKENS = 1  # the <|assistant|> that opens the reply after a prompt


class DataError(ValueError):
    """A data file is malformed. The message starts with `{path}:{line}: ` or `{path}: `."""


class Encoder(Protocol):
    """What the prompt-length helpers need from a tokenizer: `encode(text) -> token ids` (e.g. a Tokenizer)."""

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`."""


Messages = list[dict[str, str]]


# -----------------------------------------------------------------------------
# small helpers for messages


def _type_name(value: Any) -> str:
    """JSON-ish name of a value's type for error messages."""
    return "null" if value is None else type(value).__name__


def _got(value: Any) -> str:
    """`got ...` fragment: shows short strings (they were wrong by value), else the type."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return "got " + json.dumps(shown, ensure_ascii=False)
    return "got " + _type_name(value)


def _fail(where: str, message: str) -> DataError:
    return DataError(f"{where}: {message}")


def _require(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        present = ", ".join(json.dumps(k, ensure_ascii=False) for k in obj) or "none"
        raise _fail(where, f'key "{key}" is missing (keys present: {present})')
    return obj[key]


def _text(value: Any, key: str, where: str) -> str:
    """A non-empty (not whitespace-only) string, returned unchanged."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f'key "{key}" must be a non-empty string, {_got(value)}')
    return value


def _parse_messages(value: Any, key: str, where: str) -> Messages:
    """Check the structure of each message (not the turn order); return fresh {"role","content"}."""
    if not isinstance(value, list) or not value:
        raise _fail(where, f'key "{key}" must be a non-empty list of messages '
                           f'{{"role": ..., "content": ...}}, {_got(value)}')
    messages = []
    for i, message in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise _fail(where, f'key "{at}" must be an object {{"role": ..., "content": ...}}, '
                               f"{_got(message)}")
        for k in ("role", "content"):
            if k not in message:
                raise _fail(where, f'key "{at}.{k}" is missing')
        for k in message:
            if k not in ("role", "content"):
                raise _fail(where, f'key "{at}" has unknown key {json.dumps(k)}; '
                                   'a message has only "role" and "content"')
        role = message["role"]
        if role not in ROLES:
            raise _fail(where, f'key "{at}.role" must be one of "system", "user", "assistant", '
                               f"{_got(role)}")
        messages.append({"role": role, "content": _text(message["content"], f"{at}.content", where)})
    return messages


def _check_turns(messages: Messages, names: list[str], where: str, last: str) -> None:
    """Optional system message first, then user/assistant alternating, ending with `last`."""
    expected = "user"
    for i, (message, name) in enumerate(zip(messages, names)):
        role = message["role"]
        if role == "system":
            if i != 0:
                raise _fail(where, f'key "{name}.role": a "system" message is allowed only first')
            continue
        if role != expected:
            raise _fail(where, f'key "{name}.role" must be "{expected}" (after an optional system '
                               f'message, turns alternate user, assistant, ...), got "{role}"')
        expected = "assistant" if role == "user" else "user"
    if messages[-1]["role"] != last:
        raise _fail(where, f'key "{names[-1]}.role": the last message must be from the {last}, '
                           f'got "{messages[-1]["role"]}"')


def _prompt(value: Any, key: str, where: str) -> Messages:
    """A prompt: a string (one user turn) or messages ending with a user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, key, where)}]
    if not isinstance(value, list):
        raise _fail(where, f'key "{key}" must be a non-empty string or a list of messages, '
                           f"{_got(value)}")
    messages = _parse_messages(value, key, where)
    _check_turns(messages, [f"{key}[{i}]" for i in range(len(messages))], where, last="user")
    return messages


def _reply(value: Any, key: str, where: str) -> str:
    """One assistant reply: a string, or a list holding exactly one assistant message."""
    if isinstance(value, str):
        return _text(value, key, where)
    if not isinstance(value, list):
        raise _fail(where, f'key "{key}" must be a non-empty string or a list with one assistant '
                           f"message, {_got(value)}")
    messages = _parse_messages(value, key, where)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise _fail(where, f'key "{key}" must be a non-empty string or a list with one assistant '
                           f"message, got messages with roles [{roles}]")
    return messages[0]["content"]


# -----------------------------------------------------------------------------
# prompt length


def prompt_token_count(tokenizer: Encoder, prompt: Messages) -> int:
    """Tokens in the rendered generation prompt: contents + 2 per message + 1 (<|assistant|>)."""
    content = sum(len(tokenizer.encode(m["content"])) for m in prompt)
    return content + TOKENS_PER_MESSAGE * len(prompt) + GENERATION_TAG_TOKENS


def truncate_prompt(tokenizer: Encoder, prompt: Messages, max_tokens: int) -> Messages | None:
    """Left-truncate a prompt to at most `max_tokens` (as counted by `prompt_token_count`).

    Whole messages go first, oldest first (a system message, then user/assistant pairs, so the
    prompt still starts with a user turn). If the last user message alone is still too long, its
    text keeps the longest suffix that fits, found by binary search over character offsets with
    `tokenizer.encode` (so no decode is needed and the result is always valid text). Returns None
    when not even one character of the last message fits. The input is not modified.
    """
    messages = list(prompt)
    while len(messages) > 1 and prompt_token_count(tokenizer, messages) > max_tokens:
        messages = messages[1:]
        if messages[0]["role"] == "assistant":
            messages = messages[1:]
    if prompt_token_count(tokenizer, messages) <= max_tokens:
        return messages
    text = messages[-1]["content"]
    budget = max_tokens - TOKENS_PER_MESSAGE - GENERATION_TAG_TOKENS  # tokens left for the content
    lo, hi = 0, len(text)  # invariant: text[hi:] fits (the empty suffix has 0 tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.encode(text[mid:])) <= budget:
            hi = mid
        else:
            lo = mid + 1
    kept = text[hi:]
    if budget < 1 or not kept.strip():
        return None
    return [{"role": "user", "content": kept}]


def _length_options(tokenizer: Encoder | None, max_prompt_tokens: int | None, truncate: bool) -> bool:
    """Check the length arguments; True when prompts must be length-checked."""
    if max_prompt_tokens is None:
        if truncate:
            raise ValueError("truncate=True needs max_prompt_tokens (and a tokenizer)")
        return False
    if tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer to count tokens")
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    return True


def _fit(prompt: Messages, key: str, where: str, tokenizer: Encoder, max_tokens: int,
         truncate: bool, report: dict) -> Messages:
    """Return the prompt if it fits, its truncation if allowed (counted), else raise."""
    n = prompt_token_count(tokenizer, prompt)
    if n <= max_tokens:
        return prompt
    if not truncate:
        raise _fail(where, f'key "{key}" is too long: {n} tokens (contents + {TOKENS_PER_MESSAGE} '
                           f"per message + {GENERATION_TAG_TOKENS} for <|assistant|>) > "
                           f"max_prompt_tokens={max_tokens}; shorten it or pass truncate=True")
    fitted = truncate_prompt(tokenizer, prompt, max_tokens)
    if fitted is None:
        raise _fail(where, f'key "{key}" cannot be truncated to max_prompt_tokens={max_tokens}: '
                           "not even one character of the last user message fits after the "
                           f"{TOKENS_PER_MESSAGE + GENERATION_TAG_TOKENS} chat-tag tokens")
    report["truncated_prompts"] += 1
    return fitted


def _new_report(report: dict | None, records: int) -> dict:
    report = {} if report is None else report
    report.update(records=records, rows=0, dropped_identical=0, truncated_prompts=0)
    return report


# -----------------------------------------------------------------------------
# files


def _read_text(path: str | os.PathLike) -> str:
    """The whole file as text; missing / unreadable / not UTF-8 become DataError."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, expected a file") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read the file ({e.strerror})") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # tolerate a UTF-8 byte-order mark
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{name}:{line}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                        "expected UTF-8 text") from None


class _BadJSON(ValueError):
    """Raised from the json hooks below (duplicate keys, NaN/Infinity)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _BadJSON(f"duplicate key {json.dumps(key, ensure_ascii=False)}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise _BadJSON(f"{name} is not allowed (not standard JSON)")


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line; each line must be one JSON object."""
    name = os.fspath(path)
    rows = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{number}: not valid JSON ({e.msg} at column {e.colno}); "
                            "expected one JSON object per line") from None
        except _BadJSON as e:
            raise DataError(f"{name}:{number}: not valid JSON ({e}); "
                            "expected one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}:{number}: expected a JSON object {{...}}, got {_type_name(obj)}")
        rows.append((number, obj))
    if not rows:
        raise DataError(f"{name}: no records (the file is empty or only blank lines); "
                        "expected one JSON object per line")
    return rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write one compact JSON object per line, atomically (temp file in the same folder, then rename).

    UTF-8 without escaping (ensure_ascii=False), keys in insertion order, "\\n" line ends: the same
    rows always give the same bytes. NaN/inf are refused (not JSON). Creates the parent folder.
    """
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name))
    lines = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{name}:{i + 1}: can only write JSON objects (dicts), got {_type_name(row)}")
        try:
            lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise DataError(f"{name}:{i + 1}: cannot write row as JSON ({e})") from None
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    os.makedirs(folder, exist_ok=True)
    write_bytes_atomic(name, data)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: a temp file in the same folder, fsync, then rename over `path`.

    The file gets the mode open() would give it (0o666 less the umask), not tempfile.mkstemp's private
    0o600. The folder must exist; on any error the temp file is removed and `path` is left as it was.
    """
    name = os.fspath(path)
    prefix = os.path.join(os.path.dirname(os.path.abspath(name)), "." + os.path.basename(name) + ".")
    while True:  # a fresh name created exclusively, as mkstemp does, but with open()'s mode
        tmp = prefix + os.urandom(4).hex() + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# -----------------------------------------------------------------------------
# readers, one per format


def read_corpus(path: str | os.PathLike) -> list[str]:
    """Pretraining documents. `.jsonl`: {"text": str} per line. Anything else: plain UTF-8 text
    split on <|endoftext|>, each piece stripped, empty pieces between separators dropped."""
    name = os.fspath(path)
    if name.lower().endswith(".jsonl"):
        return [_text(_require(obj, "text", f"{name}:{n}"), "text", f"{name}:{n}")
                for n, obj in read_jsonl(path)]
    documents = [piece.strip() for piece in _read_text(path).split(ENDOFTEXT)]
    documents = [d for d in documents if d]
    if not documents:
        raise DataError(f"{name}: no documents (the file is empty or whitespace only); expected "
                        f"plain text with documents separated by {ENDOFTEXT}")
    return documents


def read_sft(path: str | os.PathLike, with_lines: bool = False):
    """SFT conversations as message lists: optional system first, then user/assistant alternating,
    ending with the assistant. Extra keys on a line are allowed and ignored. with_lines=True returns
    (conversations, their 1-based line numbers in the file), for messages that name the line."""
    name = os.fspath(path)
    conversations, lines = [], []
    for n, obj in read_jsonl(path):
        where = f"{name}:{n}"
        if "messages" in obj:
            clash = [k for k in ("prompt", "completion") if k in obj]
            if clash:
                raise _fail(where, f'has both "messages" and "{clash[0]}"; expected either '
                                   '{"messages": [...]} or {"prompt": ..., "completion": ...}')
            messages = _parse_messages(obj["messages"], "messages", where)
            names = [f"messages[{i}]" for i in range(len(messages))]
        elif "prompt" in obj or "completion" in obj:
            head, head_names = _sft_part(obj, "prompt", "user", where)
            _check_turns(head, head_names, where, last="user")  # the completion answers a user turn
            tail, tail_names = _sft_part(obj, "completion", "assistant", where)
            messages, names = head + tail, head_names + tail_names
        else:
            present = ", ".join(json.dumps(k, ensure_ascii=False) for k in obj) or "none"
            raise _fail(where, 'expected key "messages" or keys "prompt" and "completion" '
                               f"(keys present: {present})")
        _check_turns(messages, names, where, last="assistant")
        conversations.append(messages)
        lines.append(n)
    return (conversations, lines) if with_lines else conversations


def _sft_part(obj: dict, key: str, role: str, where: str) -> tuple[Messages, list[str]]:
    """An SFT "prompt" or "completion": a string (one `role` turn) or a list of messages; also
    returns each message's name for error messages (turn order is checked by the caller)."""
    value = _require(obj, key, where)
    if isinstance(value, str):
        return [{"role": role, "content": _text(value, key, where)}], [key]
    if not isinstance(value, list):
        raise _fail(where, f'key "{key}" must be a non-empty string or a list of messages, '
                           f"{_got(value)}")
    messages = _parse_messages(value, key, where)
    return messages, [f"{key}[{i}]" for i in range(len(messages))]


def read_preferences(path: str | os.PathLike, *, on_identical: str = "error",
                     tokenizer: Encoder | None = None, max_prompt_tokens: int | None = None,
                     truncate: bool = False, report: dict | None = None) -> list[dict]:
    """Preference pairs as {"prompt": messages, "chosen": str, "rejected": str, "extra": dict, "line": int}.

    `chosen` / `rejected` are strings or one-assistant-message lists; without a "prompt" key both
    must be full conversations sharing every message but the last (TRL's implicit prompt). `extra`
    holds the line's other keys unchanged (e.g. gold scores); `line` is the pair's 1-based line number
    in the file (blank lines counted). Identical chosen and rejected raise
    (`on_identical="error"`) or are dropped (`"drop"`). If `report` (a dict) is given it is filled
    with records, rows, dropped_identical and truncated_prompts counts.
    """
    if on_identical not in ("error", "drop"):
        raise ValueError(f'on_identical must be "error" or "drop", got {on_identical!r}')
    check_length = _length_options(tokenizer, max_prompt_tokens, truncate)
    name = os.fspath(path)
    records = read_jsonl(path)
    report = _new_report(report, len(records))
    rows = []
    for n, obj in records:
        where = f"{name}:{n}"
        chosen_raw, rejected_raw = _require(obj, "chosen", where), _require(obj, "rejected", where)
        if "prompt" in obj:
            prompt = _prompt(obj["prompt"], "prompt", where)
            chosen, rejected = _reply(chosen_raw, "chosen", where), _reply(rejected_raw, "rejected", where)
        elif isinstance(chosen_raw, list) and isinstance(rejected_raw, list):
            prompt, chosen, rejected = _implicit_prompt(chosen_raw, rejected_raw, where)
        else:
            raise _fail(where, 'key "prompt" is missing (it may be left out only when "chosen" and '
                               '"rejected" are both full conversations, i.e. lists of messages)')
        if chosen == rejected:
            if on_identical == "error":
                raise _fail(where, 'keys "chosen" and "rejected" are identical, so the pair carries no '
                                   'preference; fix the data or drop such pairs (--truncate=true in the '
                                   'reward and dpo stages, on_identical="drop" here)')
            report["dropped_identical"] += 1
            continue
        if check_length:
            prompt = _fit(prompt, "prompt", where, tokenizer, max_prompt_tokens, truncate, report)
        extra = {k: v for k, v in obj.items() if k not in ("prompt", "chosen", "rejected")}
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "extra": extra, "line": n})
    if not rows:
        raise DataError(f"{name}: all {len(records)} pairs had identical chosen and rejected and were "
                        "dropped; nothing is left to train on")
    report["rows"] = len(rows)
    return rows


def _implicit_prompt(chosen_raw: list, rejected_raw: list, where: str) -> tuple[Messages, str, str]:
    """TRL's implicit prompt: two full conversations that differ only in the last assistant turn."""
    chosen = _parse_messages(chosen_raw, "chosen", where)
    rejected = _parse_messages(rejected_raw, "rejected", where)
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        # ends with the assistant after a user turn, so the shared prompt is never empty
        _check_turns(messages, [f"{key}[{i}]" for i in range(len(messages))], where, last="assistant")
    if chosen[:-1] != rejected[:-1]:
        i = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b),
                 min(len(chosen), len(rejected)) - 1)
        raise _fail(where, 'keys "chosen" and "rejected" must share the same prompt (every message '
                           f"but the last) when there is no \"prompt\" key; they differ at message {i}")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def read_preferences_with_report(path: str | os.PathLike, **kwargs: Any) -> tuple[list[dict], dict]:
    """`read_preferences(path, **kwargs)` and its report dict (records, rows, dropped_identical,
    truncated_prompts)."""
    report: dict = {}
    rows = read_preferences(path, report=report, **kwargs)
    return rows, report


def read_kto(path: str | os.PathLike, *, tokenizer: Encoder | None = None,
             max_prompt_tokens: int | None = None, truncate: bool = False,
             report: dict | None = None) -> list[dict]:
    """Unpaired KTO examples as {"prompt": messages, "completion": str, "label": bool, "extra": dict, "line": int}.

    The label must be a JSON true/false (0/1 are refused: they are ints). `line` as in `read_preferences`;
    `report` as there too (records, rows, truncated_prompts)."""
    check_length = _length_options(tokenizer, max_prompt_tokens, truncate)
    name = os.fspath(path)
    records = read_jsonl(path)
    report = _new_report(report, len(records))
    rows = []
    for n, obj in records:
        where = f"{name}:{n}"
        prompt = _prompt(_require(obj, "prompt", where), "prompt", where)
        completion = _reply(_require(obj, "completion", where), "completion", where)
        label = _require(obj, "label", where)
        if not isinstance(label, bool):
            raise _fail(where, 'key "label" must be a boolean (true or false), '
                               f"got {_type_name(label)} {json.dumps(label, ensure_ascii=False)}")
        if check_length:
            prompt = _fit(prompt, "prompt", where, tokenizer, max_prompt_tokens, truncate, report)
        extra = {k: v for k, v in obj.items() if k not in ("prompt", "completion", "label")}
        rows.append({"prompt": prompt, "completion": completion, "label": label, "extra": extra, "line": n})
    report["rows"] = len(rows)
    return rows


def prompt_text(prompt) -> str:
    """A prompt as the world's judge reads it: the string itself, or a message list's last user turn."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def judge_prompt(prompt):
    """A prompt as a user's `--gold-judge` receives it (`evaluate.load_judge`): a string stays a string, a
    single user turn becomes its string, and a longer conversation (a system turn, earlier turns) stays the
    message list, so the judge sees what the policy saw."""
    if isinstance(prompt, str):
        return prompt
    return prompt[0]["content"] if len(prompt) == 1 and prompt[0]["role"] == "user" else prompt


def read_prompts(path: str | os.PathLike, *, tokenizer: Encoder | None = None,
                 max_prompt_tokens: int | None = None, truncate: bool = False,
                 report: dict | None = None) -> list[Messages]:
    """RL prompts as message lists ending with a user turn. Extra keys are allowed and ignored.
    `report` as in `read_preferences` (records, rows, truncated_prompts)."""
    check_length = _length_options(tokenizer, max_prompt_tokens, truncate)
    name = os.fspath(path)
    records = read_jsonl(path)
    report = _new_report(report, len(records))
    prompts = []
    for n, obj in records:
        where = f"{name}:{n}"
        prompt = _prompt(_require(obj, "prompt", where), "prompt", where)
        if check_length:
            prompt = _fit(prompt, "prompt", where, tokenizer, max_prompt_tokens, truncate, report)
        prompts.append(prompt)
    report["rows"] = len(prompts)
    return prompts
