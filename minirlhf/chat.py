"""The chat template: chat messages -> token ids and the loss mask every stage trains with.

    <|user|>{user text}<|end|><|assistant|>{assistant text}<|end|><|user|>...

* ``render_conversation`` renders a whole conversation (ending with an assistant turn) with a loss mask
  that is 1 exactly on each assistant turn's content tokens and its closing ``<|end|>`` (SFT);
* ``render_prompt`` renders a prompt for generation, ending with the ``<|assistant|>`` token;
* ``render_reply`` renders a prompt and its final reply with the mask on that reply only (the reward
  model and the preference losses: earlier assistant turns of a multi-turn prompt are context).

    from minirlhf.chat import render_conversation, render_prompt
    ids, mask = render_conversation(tok, [{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Hello!"}])
    prompt_ids = render_prompt(tok, "What is the capital of France?")   # ends with <|assistant|>

Content is plain text (``Tokenizer.encode``): a literal ``"<|end|>"`` typed by a user is ordinary bytes,
so control tokens enter a sequence only here. ``minirlhf.hf`` exports the same template as Jinja.

Deliberate simplifications: a leading ``system`` message is not a separate turn (the template has no
system token): its text is prepended to the first user message, separated by a blank line.
"""

from __future__ import annotations

from typing import Sequence

from minirlhf.tokenizer import Tokenizer


def _check_messages(messages: Sequence[dict], final_role: str) -> list[tuple[str, str]]:
    """Validate messages; returns (role, content) pairs with any system text folded into turn 0."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    turns: list[tuple[str, str]] = []
    system: str | None = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}]: must be a dict with keys 'role' and 'content', got {m!r}")
        role, content = m["role"], m["content"]
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}]: 'content' must be a str, got {type(content).__name__}")
        if role == "system":
            if i != 0:
                raise ValueError(f"messages[{i}]: a 'system' message is only allowed first")
            system = content
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"messages[{i}]: unknown role {role!r} (expected 'user' or 'assistant')")
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"messages[{i}]: expected a {expected!r} turn (roles must alternate, user first), got {role!r}"
            )
        if system is not None and not turns:
            content = system + "\n\n" + content
        turns.append((role, content))
    if not turns:
        raise ValueError("messages: no user/assistant turns")
    if turns[-1][0] != final_role:
        hint = " (use render_prompt for a generation prompt)" if final_role == "assistant" else ""
        raise ValueError(
            f"messages[{len(messages) - 1}]: the conversation must end with a {final_role!r} turn, "
            f"got {turns[-1][0]!r}{hint}"
        )
    return turns


def render_conversation(tok: Tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """Chat messages -> (ids, loss_mask) for SFT / reward modelling / preference losses.

    ``<|user|>{u}<|end|><|assistant|>{a}<|end|>...``; ``loss_mask`` is 1 on the assistant's content
    tokens and its closing ``<|end|>``, 0 elsewhere (the ``<|assistant|>`` token included). Messages
    must alternate user/assistant, start with user (after an optional leading system message, whose
    text is prepended to the first user turn) and end with assistant. Content is plain text: a
    literal ``"<|end|>"`` inside it is encoded as ordinary bytes.
    """
    ids: list[int] = []
    mask: list[int] = []
    for role, content in _check_messages(messages, final_role="assistant"):
        body = tok.encode(content)
        if role == "user":
            ids += [tok.user_id, *body, tok.end_id]
            mask += [0] * (len(body) + 2)
        else:
            ids += [tok.assistant_id, *body, tok.end_id]
            mask += [0] + [1] * (len(body) + 1)
    return ids, mask


def render_prompt(tok: Tokenizer, prompt: str | Sequence[dict]) -> list[int]:
    """A generation prompt: ``<|user|>{prompt}<|end|><|assistant|>`` (or a message list ending in user).

    The returned ids end with the ``<|assistant|>`` token; the model continues with the response.
    """
    if isinstance(prompt, str):
        turns = [("user", prompt)]
    else:
        turns = _check_messages(prompt, final_role="user")
    ids: list[int] = []
    for role, content in turns:
        ids += [tok.user_id if role == "user" else tok.assistant_id, *tok.encode(content), tok.end_id]
    ids.append(tok.assistant_id)
    return ids


def render_reply(tok: Tokenizer, prompt: list[dict], reply: str) -> tuple[list[int], list[int]]:
    """A prompt and its final assistant reply -> (ids, loss mask), the mask 1 on the reply's tokens and its
    closing ``<|end|>`` only: what the reward model and the preference losses score.

    ``render_conversation`` marks every assistant turn; the earlier assistant turns of a multi-turn prompt
    are context, not the response being scored, so the mask is zeroed over the rendered prompt (its ids,
    ``render_prompt``, are exactly the first tokens of the conversation, up to the reply's
    ``<|assistant|>``)."""
    ids, mask = render_conversation(tok, prompt + [{"role": "assistant", "content": reply}])
    n = len(render_prompt(tok, prompt))
    return ids, [0] * n + mask[n:]
