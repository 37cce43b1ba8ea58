"""Build each row's prompt with the model's own HF processor chat template.

The rendered text carries the model's audio placeholders (for Qwen2-Audio `<|audio_bos|><|AUDIO|>
<|audio_eos|>`); vLLM expands each placeholder to as many audio tokens as the clip needs.
"""
from __future__ import annotations

import pyarrow as pa

from operators.models import ModelSpec
from operators.stage import LIGHT_CPUS, Stage, actors, put


def conversation(system: str | None, instruction: str, n_audio: int = 1) -> list[dict]:
    """OpenAI/HF-style messages: an optional system turn, then the audio items and the instruction."""
    user = [{"type": "audio", "audio_url": f"audio_{k}"} for k in range(n_audio)]
    user.append({"type": "text", "text": instruction})
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def render(processor, spec: ModelSpec, system: str | None, instruction: str, n_audio: int = 1) -> str:
    if spec.prompt_format == "fixed":
        return spec.fixed_prompt
    messages = conversation(system if system is not None else spec.default_system, instruction, n_audio)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class Prompt(Stage):
    reads = ()
    writes = ("prompt", "prompt_text")

    def setup(self) -> None:
        self.spec: ModelSpec = self.cfg["spec"]
        self.processor = None
        if self.spec.prompt_format == "chat":
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.cfg["model_path"])
        # The instruction is the same for every row of a caption job: render it once.
        self.text = render(self.processor, self.spec, self.cfg["system"], self.cfg["instruction"])

    def process(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        return put(batch, prompt=pa.array([self.cfg["instruction"] or self.text] * n, pa.string()),
                   prompt_text=pa.array([self.text] * n, pa.string()))


def apply(ds, cfg, spec: ModelSpec):
    return ds.map_batches(
        Prompt,
        fn_constructor_kwargs=dict(spec=spec, model_path=cfg.model.path, system=cfg.prompt.system,
                                   instruction=cfg.prompt.instruction),
        batch_format="pyarrow",
        batch_size=cfg.engine.batch_size,
        compute=actors(1),
        num_cpus=LIGHT_CPUS,
    )
