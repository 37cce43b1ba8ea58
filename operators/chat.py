"""Render a text LLM's prompt with its own chat template (the checkpoint's tokenizer): a rewrite's prompt stage.

As Ray Data LLM's chat-template stage, it runs on CPU before the engine, so the engine actor spends its time
generating. The family's facts come from the registry: its default system prompt, whether its template takes
a system turn at all (Mistral's refuses one: the system text then opens the user's turn) and the arguments
its template reads (Qwen3's `enable_thinking`).
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from operators.models import ModelSpec
from operators.stage import LIGHT_CPUS, Stage, actors, errors, put


def messages(spec: ModelSpec, system: str | None, text: str) -> list[dict]:
    """The chat of one rewrite: the system text (the job's, else the family's) and the user's turn."""
    system = system if system is not None else spec.default_system
    if system and not spec.system_role:
        return [{"role": "user", "content": f"{system}\n\n{text}"}]
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


class Chat(Stage):
    reads = ("prompt", "error")
    writes = ("prompt_text", "prompt")  # `prompt` becomes the text the model is given, as the output keeps it
    working = ("prompt_text",)

    def setup(self) -> None:
        from transformers import AutoTokenizer

        self.spec: ModelSpec = self.cfg["spec"]
        self.system: str | None = self.cfg["system"]
        self.tokenizer = AutoTokenizer.from_pretrained(self.cfg["model_path"],
                                                       trust_remote_code=self.cfg["trust_remote_code"])

    def render(self, text: str) -> str:
        return self.tokenizer.apply_chat_template(messages(self.spec, self.system, text), add_generation_prompt=True,
                                                  tokenize=False, **self.spec.template_args)

    def process(self, batch: pa.Table) -> pa.Table:
        texts = [None if e is not None or p is None else self.render(p)
                 for p, e in zip(batch.column("prompt").to_pylist(), errors(batch))]
        texts = pa.array(texts, pa.string())
        return put(batch, prompt_text=texts, prompt=pc.if_else(pc.is_null(texts), batch.column("prompt"), texts))


def apply(ds, cfg, spec: ModelSpec):
    return ds.map_batches(
        Chat,
        fn_constructor_kwargs=dict(spec=spec, system=cfg.rewrite.system, model_path=cfg.model.path,
                                   trust_remote_code=cfg.model.trust_remote_code),
        batch_format="pyarrow",
        batch_size=cfg.engine.batch_size,
        compute=actors(1),
        num_cpus=LIGHT_CPUS,
    )
