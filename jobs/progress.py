"""Progress a log can carry: what the write stage commits, said in one line every `progress.every_s` seconds.

`ray job logs -f`, cron mail and a piped terminal all get the same line (a terminal also gets Ray Data's bars):

    progress: 1520.0/6000 input rows (25.3 %), 1520 output rows; 4.12 rows/s last 60 s, 3.95 overall;
    errors decode/missing 3; audio 2.1113 h; ETA 18 min 8 s

The same figures go to Ray's metrics as gauges (`earmark_rows_done`, `earmark_rows_in`, `earmark_rows_per_s`,
`earmark_errors`, `earmark_audio_hours`, `earmark_eta_s`, tagged with the output), which the Ray dashboard's
Metrics view (Prometheus/Grafana) shows per job.
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections import Counter, deque
from typing import Iterator


def duration(seconds: float) -> str:
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h} h {m} min" if h else f"{m} min {s} s" if m else f"{s} s"


class Stalled(RuntimeError):
    """No row was committed for `run.stall_s` seconds: the job stops rather than wait forever."""


class Progress:
    """Counts commits (a few numbers each, from the write stage) and says them now and then; `last` is the
    time of the last commit."""

    def __init__(self, rows_in: int, done: int, every_s: float, output: str, out=None):
        self.rows_in, self.start_done, self.every_s = rows_in, float(done), every_s
        self.done, self.output_rows, self.audio_s = float(done), 0, 0.0
        self.errors: Counter = Counter()
        self.events: set[str] = set()
        self.t0 = time.time()
        self.recent = deque([(self.t0, self.done)])  # (time, done) over the last interval
        self.out = out or (lambda line: print(line, file=sys.stdout, flush=True))
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.gauges = self._gauges(output)
        self.last = self.t0
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.ticker.start()

    @staticmethod
    def _gauges(output: str) -> dict:
        from ray.util.metrics import Gauge

        names = {"rows_done": "input rows committed", "rows_in": "input rows of the run",
                 "rows_per_s": "input rows committed per second, last interval", "errors": "error rows so far",
                 "audio_hours": "hours of audio done", "eta_s": "seconds left at the last interval's rate"}
        return {k: (Gauge(f"earmark_{k}", description=d, tag_keys=("output",)), {"output": output})
                for k, d in names.items()}

    def add(self, batch) -> None:
        """One result batch of the write stage (pyarrow): files committed and their figures."""
        with self.lock:
            self.last = time.time()
            self.output_rows += int(sum(batch["rows"].to_pylist()))
            self.done += float(sum(batch["inputs"].to_pylist()))
            self.audio_s += float(sum(batch["audio_s"].to_pylist()))
            for errors in batch["errors"].to_pylist():
                self.errors.update(json.loads(errors))
            for events in batch["events"].to_pylist():
                for event in json.loads(events):
                    if event not in self.events:  # said once, when its first row is committed
                        self.events.add(event)
                        self.out(f"event: {event}")

    def line(self) -> str:
        with self.lock:
            now = time.time()
            self.recent.append((now, self.done))
            while len(self.recent) > 2 and now - self.recent[1][0] >= self.every_s:
                self.recent.popleft()
            (t_then, d_then), elapsed = self.recent[0], max(now - self.t0, 1e-9)
            recent = (self.done - d_then) / max(now - t_then, 1e-9)
            overall = (self.done - self.start_done) / elapsed
            left = self.rows_in - self.done
            eta = left / recent if recent > 0 else None
            values = {"rows_done": self.done, "rows_in": self.rows_in, "rows_per_s": recent,
                      "errors": sum(self.errors.values()), "audio_hours": self.audio_s / 3600, "eta_s": eta or 0.0}
            for name, (gauge, tags) in self.gauges.items():
                gauge.set(values[name], tags=tags)
            errors = ", ".join(f"{k} {n}" for k, n in sorted(self.errors.items())) or "none"
            pct = 100 * self.done / self.rows_in if self.rows_in else 100.0
            return (f"progress: {self.done:.1f}/{self.rows_in} input rows ({pct:.1f} %), {self.output_rows} output rows; "
                    f"{recent:.2f} rows/s last {self.every_s:g} s, {overall:.2f} overall; errors {errors}; "
                    f"audio {self.audio_s / 3600:.4f} h; ETA {duration(eta) if eta is not None else 'unknown'}")

    def _tick(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.out(self.line())

    def watch(self, batches: Iterator, stall_s: float) -> Iterator:
        """`batches` (Ray Data's iterator of the write stage's results), counted, until no commit came for
        `stall_s` seconds: then Stalled. The iterator runs in a thread of its own, so that the driver's wait
        always ends: a wait inside Ray's own calls may never see an interrupt."""
        handed: queue.Queue = queue.Queue(maxsize=4)
        end = object()

        def pump():
            try:
                for batch in batches:
                    handed.put(batch)
                handed.put(end)
            except BaseException as e:  # noqa: BLE001 - raised again in the driver's thread
                handed.put(e)

        threading.Thread(target=pump, daemon=True).start()
        while True:
            try:
                item = handed.get(timeout=1.0)
            except queue.Empty:
                if time.time() - self.last >= stall_s:
                    raise Stalled(f"no row committed for {time.time() - self.last:.0f} s (run.stall_s={stall_s:g})")
                continue
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            self.add(item)
            yield item

    def stop(self) -> None:
        """The last line, with the run's final figures."""
        self.stopped.set()
        self.ticker.join()
        self.out(self.line())
