"""A manifest row's audio items and conversation, from either input format, as HF chat messages.

Two formats are accepted as they are:

- DataFlow-MM: `{"audio": [path, ...], "conversation": [{"from": "human"|"gpt"|"system", "value": text}]}`.
  Each `<audio>` marker in the text stands for the next audio of the row, in order. A conversation without
  markers gets all the row's audio at the start of its first human turn (what DataFlow-MM's generator does).
- OpenAI/HF chat: `{"messages": [{"role": ..., "content": str | [{"type": "audio", "audio"|"path"|"audio_url":
  ...}, {"type": "input_audio", "input_audio": {"data": base64}}, {"type": "text", "text": ...}]}]}`.

Both become HF messages whose audio items are placeholders (`audio_item`), numbered in the order of
the row's audio list, which the model's chat template renders. Earlier assistant turns stay as context; the
last turn must be the user's, since the job answers it.
"""
from __future__ import annotations

import base64
import binascii

MARKER = "<audio>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def audio_item(k: int) -> dict:
    """Placeholder for the row's k-th audio. Templates test `type` or the presence of an `audio`/`audio_url`
    key (Qwen2-Audio's only the latter); rendering as text never loads it."""
    return {"type": "audio", "audio_url": f"audio_{k}"}


class ConversationError(ValueError):
    """The row's conversation cannot be answered as it is; the message says why."""


def _text(value) -> str:
    if not isinstance(value, str):
        raise ConversationError(f"turn text must be a string, got {type(value).__name__}")
    return value


def from_dataflow(turns: list, audio: list) -> list[dict]:
    """DataFlow-MM `conversation` turns and the row's `audio` list -> HF messages."""
    if not isinstance(turns, list) or not turns:
        raise ConversationError("'conversation' must be a non-empty list of {from, value} turns")
    markers = sum(_text(t.get("value")).count(MARKER) for t in turns if isinstance(t, dict))
    if markers and markers != len(audio):
        raise ConversationError(f"{markers} {MARKER} markers but {len(audio)} audio files")
    messages, first_human, n = [], True, 0
    for t in turns:
        if not isinstance(t, dict) or t.get("from") not in ROLES:
            raise ConversationError(f"each turn needs 'from' in {sorted(ROLES)}; got {t!r:.80}")
        role, text = ROLES[t["from"]], _text(t.get("value"))
        content: list[dict] = []
        if role == "user" and first_human and not markers:
            content += [audio_item(k) for k in range(len(audio))]
        if role == "user":
            first_human = False
        for k, piece in enumerate(text.split(MARKER)):
            if k:
                content.append(audio_item(n))
                n += 1
            if piece.strip():
                content.append({"type": "text", "text": piece.strip()})
        messages.append({"role": role, "content": content if role == "user" else text})
    return messages


def _audio_ref(item: dict):
    """The audio an OpenAI/HF content item points at: a path/URI, or inline bytes for `input_audio`."""
    if item.get("type") == "input_audio" or "input_audio" in item:
        data = (item.get("input_audio") or {}).get("data")
        try:
            return base64.b64decode(data, validate=True)
        except (TypeError, binascii.Error):
            raise ConversationError("input_audio.data must be base64-encoded audio") from None
    for key in ("audio", "path", "audio_url", "url"):
        ref = item.get(key)
        if isinstance(ref, dict):  # {"audio_url": {"url": ...}}
            ref = ref.get("url")
        if isinstance(ref, str) and ref:
            return ref
    raise ConversationError(f"audio item without a path: {item!r:.80}")


def from_messages(messages: list) -> tuple[list[dict], list]:
    """OpenAI/HF `messages` -> HF messages with audio placeholders, and the audio refs in order."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("'messages' must be a non-empty list of {role, content} messages")
    out, refs = [], []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ConversationError(f"each message needs 'role' in {sorted(ROLES)}; got {m!r:.80}")
        role, content = ROLES[m["role"]], m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ConversationError(f"message content must be a string or a list, got {type(content).__name__}")
        items = []
        for item in content:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind in ("audio", "input_audio", "audio_url") or (isinstance(item, dict) and kind is None and
                                                                  ({"audio", "input_audio"} & item.keys())):
                items.append(audio_item(len(refs)))
                refs.append(_audio_ref(item))
            elif kind == "text" or (isinstance(item, dict) and "text" in item):
                items.append({"type": "text", "text": _text(item.get("text"))})
            else:
                raise ConversationError(f"unsupported content item: {item!r:.80}")
        # Templates render a string content as it is; a text-only list is the same message.
        if role != "user" and all(i["type"] == "text" for i in items):
            out.append({"role": role, "content": "".join(i["text"] for i in items)})
        else:
            out.append({"role": role, "content": items})
    return out, refs


def check(messages: list[dict]) -> list[dict]:
    if messages[-1]["role"] != "user":
        raise ConversationError(f"the last turn is the {messages[-1]['role']}'s; nothing to answer")
    return messages


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Prepend the configured system prompt unless the conversation brings its own."""
    if system is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]


def instruction(n_audio: int, text: str) -> list[dict]:
    """The one-turn conversation of a caption or transcription prompt: the audio, then the instruction (none
    for a model that takes only audio)."""
    words = [{"type": "text", "text": text}] if text else []
    return [{"role": "user", "content": [*(audio_item(k) for k in range(n_audio)), *words]}]
