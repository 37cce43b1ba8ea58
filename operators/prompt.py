"""Build each row's prompt with the model's own HF processor chat template, fanning rows out over prompts.

The rendered text carries the model's audio placeholders (for Qwen2-Audio `<|audio_bos|><|AUDIO|>
<|audio_eos|>`); vLLM expands each placeholder to as many audio tokens as the clip needs.

This stage runs after decoding: a clip asked K prompts is fetched and decoded once and leaves here as one
row with its K `asks` (prompt id, prompt, rendered text, error) and the `prompts` count (what a resume needs
to know the row is complete). The engine stage fans it out (`fan_out`) into K rows after the audio has left
them, so that a window's audio (1.9 MB for 30 s) is never copied per prompt. A row with its own conversation
(question answering) is answered as it is: one ask, `prompt_id` "conversation".
"""
from __future__ import annotations

import functools
import json
import re

import pyarrow as pa
import pyarrow.compute as pc

from operators import conversation
from operators.models import ModelSpec
from operators.stage import LIGHT_CPUS, Stage, actors, dropped, errors, put

CONVERSATION = "conversation"


# `{column}` in an instruction: a manifest column's value, inserted as text. `{{` and `}}` are braces.
FIELD = re.compile(r"\{\{|\}\}|\{(\w*)\}")
# A rewrite's template names answers by prompt too: `{answers.caption}`.
TEMPLATE = re.compile(r"\{\{|\}\}|\{([\w.]*)\}")


def fields(instruction: str, pattern: re.Pattern = FIELD) -> list[str]:
    """The manifest columns an instruction names."""
    return [m.group(1) for m in pattern.finditer(instruction) if m.group(1)]


def fill(instruction: str, row: dict, pattern: re.Pattern = FIELD) -> str:
    """The instruction with each `{column}` replaced by the row's value as text (one pass: braces in values
    stay as they are, nothing is evaluated). Raises KeyError naming a column the row lacks or leaves null."""
    def value(m: re.Match) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        v = row.get(m.group(1))
        if v is None:
            raise KeyError(m.group(1))
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return pattern.sub(value, instruction)


@functools.cache
def whisper_languages() -> frozenset[str]:
    """The languages Whisper has a token for (`<|fr|>`): ISO 639-1 codes and a few more (haw, yue)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return frozenset(LANGUAGES)


def render(processor, spec: ModelSpec, messages: list[dict]) -> str:
    """The prompt text for HF chat messages (system turn included or not) with audio placeholders."""
    if spec.prompt_format == "fixed":
        return spec.fixed_prompt
    messages = conversation.with_system(messages, spec.default_system)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         chat_template=spec.chat_template)


def last_user_text(messages: list[dict]) -> str:
    content = messages[-1]["content"]
    return content if isinstance(content, str) else " ".join(i["text"] for i in content if i["type"] == "text")


# One prompt a clip is asked: what `fan_out` makes the columns of its row. `language` where the model's
# prompt names one (multilingual Whisper).
ASK = [("prompt_id", pa.string()), ("prompt", pa.string()), ("prompt_text", pa.string()), ("error", pa.string())]
SPOKEN = ("language", pa.string())


def fan_out(batch: pa.Table, without: tuple[str, ...] = ()) -> pa.Table:
    """One row per clip and ask: the clip's columns but `without` repeated, each ask's fields as columns.
    Leave the audio out (`without`): a clip asked K prompts would be copied K times."""
    asks = batch.column("asks")
    flat = pc.list_flatten(asks)
    out = dropped(batch, ("asks", *without)).take(pc.list_parent_indices(asks))
    return put(out, **{f.name: pc.struct_field(flat, f.name) for f in asks.type.value_type})


class Prompt(Stage):
    reads = ("audio_uris", "chat")  # and `language` where the model's prompt names it (multilingual Whisper)
    writes = ("asks", "prompts")
    working = ("asks",)
    records = ("prompts",)

    def setup(self) -> None:
        self.spec: ModelSpec = self.cfg["spec"]
        self.system: str | None = self.cfg["system"]
        self.prompts: dict[str, dict] = self.cfg["prompts"]  # id -> {instruction, system}
        self.answer_conversations: bool = self.cfg["conversations"]
        self.processor = None
        if self.spec.prompt_format != "fixed":
            from transformers import AutoProcessor, AutoTokenizer

            # A family with its template in the registry has no HF processor to load; its tokenizer renders it.
            auto = AutoTokenizer if self.spec.chat_template else AutoProcessor
            self.processor = auto.from_pretrained(self.cfg["model_path"], trust_remote_code=self.cfg["trust_remote_code"])
        self.cache: dict[tuple[str, int], str] = {}  # the same prompt for every clip: rendered once
        self.language: str = self.cfg["language"] or "en"  # where the prompt names one; a row's own wins

    def _instruction(self, pid: str, n_audio: int, text: str) -> str:
        """The rendered prompt of an instruction (cached: most instructions are the same for every clip)."""
        if (pid, n_audio, text) not in self.cache:
            p = self.prompts[pid]
            messages = conversation.with_system(conversation.instruction(n_audio, text), p["system"] or self.system)
            self.cache[(pid, n_audio, text)] = render(self.processor, self.spec, messages)
            if len(self.cache) > 10_000:  # instructions filled from rows: keep the cache bounded
                self.cache.clear()
        return self.cache[(pid, n_audio, text)]

    def _ids(self, chat: str | None) -> list[str]:
        """The prompts a row is asked: its own conversation, or every configured prompt."""
        if self.answer_conversations and (chat is not None or not self.prompts):
            return [CONVERSATION]
        return list(self.prompts)

    def _ask(self, pid: str, chat: str | None, n_audio: int, row: dict) -> tuple[str, str]:
        """(prompt shown in the output, rendered prompt text); KeyError for a column the row lacks."""
        if pid != CONVERSATION:
            text = fill(self.prompts[pid]["instruction"], row)
            return text, self._instruction(pid, n_audio, text)
        messages = conversation.with_system(json.loads(chat), self.system)
        return last_user_text(messages), render(self.processor, self.spec, messages)

    def _check(self, uris: list[str], chat: str | None) -> str | None:
        if len(uris) > self.spec.max_audios:
            return (f"prompt/too_many_audio: {', '.join(uris)}: the model takes at most {self.spec.max_audios} "
                    f"audio item(s) per prompt; this row has {len(uris)}")
        if self.answer_conversations and chat is None and not self.prompts:
            return (f"prompt/no_conversation: {', '.join(uris)}: the row has no 'conversation' or 'messages' and "
                    "prompt.use names no prompt to ask instead")
        return None

    def _spoken(self, rendered: str, uris: list[str], lang: str | None) -> tuple[str | None, str, str | None]:
        """(the prompt naming the language, the language, an error): the row's `language`, else the job's."""
        lang = lang or self.language
        if lang not in whisper_languages():
            return None, lang, (f"prompt/unknown_language: {', '.join(uris)}: the row's language {lang!r} is not one "
                                "Whisper knows; give an ISO 639-1 code (en, fr, zh, ...)")
        return rendered.replace("{language}", lang), lang, None

    def process(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        spoken = batch.column("language").to_pylist() if "language" in batch.column_names else [None] * n
        chats = batch.column("chat").to_pylist() if "chat" in batch.column_names else [None] * n
        named = sorted({f for p in self.prompts.values() for f in fields(p["instruction"])} & set(batch.column_names))
        values = [dict(zip(named, v)) for v in zip(*(batch.column(c).to_pylist() for c in named))] if named else \
            [{}] * batch.num_rows
        rows = zip(batch.column("audio_uris").to_pylist(), chats, errors(batch), values)
        asks, counts = [], []
        for i, (uris, chat, err, row) in enumerate(rows):
            err = err or self._check(uris, chat)
            pids = self._ids(chat)
            mine = []
            for pid in pids:  # error rows too: every prompt of every row comes out once
                text = rendered = None
                failed = err
                if err is None:
                    try:
                        text, rendered = self._ask(pid, chat, len(uris), row)
                    except KeyError as e:  # only this prompt fails: the row's others may need no field
                        failed = (f"prompt/missing_field: {', '.join(uris)}: the row has no value for {e.args[0]!r}, "
                                  f"which prompt {pid!r} names")
                ask = {"prompt_id": pid, "prompt": text, "prompt_text": rendered, "error": failed}
                if self.spec.languages:
                    lang = spoken[i]
                    if failed is None:
                        ask["prompt_text"], lang, ask["error"] = self._spoken(rendered, uris, lang)
                    ask["language"] = lang
                mine.append(ask)
            asks.append(mine)
            counts.append(len(pids))
        ask_type = pa.struct(ASK + [SPOKEN] * bool(self.spec.languages))
        return put(batch, asks=pa.array(asks, pa.list_(ask_type)), prompts=pa.array(counts, pa.int32()))


def apply(ds, cfg, spec: ModelSpec, prompts: dict, conversations: bool):
    return ds.map_batches(
        Prompt,
        fn_constructor_kwargs=dict(spec=spec, model_path=cfg.model.path, trust_remote_code=cfg.model.trust_remote_code,
                                   system=cfg.prompt.system,
                                   prompts={k: v.model_dump() for k, v in prompts.items()},
                                   conversations=conversations, language=cfg.prompt.language),
        batch_format="pyarrow",
        batch_size=None,  # decode's blocks as they come: Ray Data bounds a block by bytes, a batch of rows would not
        compute=actors(1),
        num_cpus=LIGHT_CPUS,
    )
