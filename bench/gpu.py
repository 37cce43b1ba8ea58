"""The first GPU night in one command: Qwen2-Audio-7B's shape with dummy weights (vLLM's load_format=dummy),
10 s clips, 64 tokens each (ignore_eos), three ways:

- the whole caption job (Ray Data, decode actors, prompt stage, async engine actor, parquet commits), at the
  production config's engine and batch settings (configs/caption.yaml);
- the same engine (same arguments) through vLLM's `LLM.generate` on pre-decoded audio, one call;
- transformers `generate` at batch 32 on the same prompts and audio (greedy, 64 new tokens).

Printed for each: clips/s, the GPU's busy share while it ran (NVML utilization sampled every 0.2 s), and
for the two vLLM sides the engine's batch sizes seen (vLLM's own "Running: N reqs" stat, logged every
second). Targets on one H100/H200: job >= 1.35x `LLM.generate`, GPU busy >= 90 %.

    python bench/gpu.py [--clips 512]          # one GPU, about 8 minutes
    python bench/gpu.py --tiny [--clips 64]    # the tiny Qwen2-Audio on CPU: the same code, tested here

The 7B shape is the tiny checkpoint's config with Qwen2-Audio-7B's sizes (its tokenizer and processor, so
the prompt and audio tokens are the real model's count); the job's rate is its rows over its engine stage's
span (first batch in to last out), `LLM.generate`'s one timed call after a warm-up call: engine start-up is
left out of both. Needs `make assets` first.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import pipeline  # noqa: E402  (bench/pipeline.py: the clips, the engine-only side)

ROOT = pipeline.ROOT
TINY = os.path.join(ROOT, ".cache", "models", "tiny-qwen2-audio")
# Qwen/Qwen2-Audio-7B-Instruct's config.json: Qwen2-7B under a Whisper-large-v3-sized encoder.
SHAPE_7B = {"text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                            "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 8192},
            "audio_config": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                             "encoder_ffn_dim": 5120, "num_mel_bins": 128, "max_source_positions": 1500}}
RUNNING = re.compile(r"Running: (\d+) reqs")


def shape_7b(folder: str) -> str:
    """A checkpoint folder with no weights: the tiny model's tokenizer and processor, the 7B's sizes."""
    path = os.path.join(folder, "qwen2-audio-7b-shape")
    shutil.copytree(TINY, path, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    for part, sizes in SHAPE_7B.items():
        config[part].update(sizes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path


class Busy(threading.Thread):
    """The GPU's utilization (NVML: percent of time a kernel ran) sampled every 0.2 s until stopped; no
    samples on CPU."""

    def __init__(self, gpu: bool):
        super().__init__(daemon=True)
        self.gpu, self.samples, self.running = gpu, [], True

    def run(self):
        if not self.gpu:
            return
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        while self.running:
            self.samples.append((time.time(), pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            time.sleep(0.2)

    def stop(self, since: float = 0.0) -> float | None:
        """The mean busy percent of the samples taken after `since`; None without samples."""
        self.running = False
        self.join()
        kept = [u for t, u in self.samples if t >= since]
        return round(statistics.mean(kept), 1) if kept else None


def batches(lines) -> dict | None:
    """The engine's running requests per logged interval: what the scheduler had to batch."""
    seen = [int(n) for line in lines for n in RUNNING.findall(line)]
    seen = [n for n in seen if n]  # intervals with nothing running: before the first request, after the last
    return {"max": max(seen), "median": statistics.median(seen), "samples": len(seen)} if seen else None


def job(manifest: str, out: str, config_path: str, overrides: list[str], gpu: bool) -> dict:
    """The caption job's rate while its engine worked: rows over the Generate stage's span (first batch in to
    last out: engine start-up excluded, as on the other sides), the GPU's busy share over that span."""
    import ray

    from jobs import caption
    from jobs.runner import run
    from operators import config

    cfg = config.load(config_path, overrides, input=manifest, output=out)
    busy = Busy(gpu)
    busy.start()
    summary = run(cfg, caption.JOB, fresh=True)
    assert summary["rows_ok"] == summary["rows_in"], summary
    span = summary["stages"]["Generate"]["span_s"]
    last = max(os.stat(os.path.join(out, f)).st_mtime for f in os.listdir(out) if f.startswith("part-"))
    share = busy.stop(since=last - span)
    logs = ray._private.worker._global_node.get_logs_dir_path()  # the engine actor logs its stats there
    lines = [line for name in os.listdir(logs) if name.startswith("worker-") and name.endswith((".out", ".err"))
             for line in open(os.path.join(logs, name), errors="replace")]
    ray.shutdown()
    return {"clips_s": round(summary["rows_in"] / span, 2), "gpu_busy_pct": share, "engine_running_reqs": batches(lines)}


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def engine(manifest: str, config: str, overrides: list[str], gpu: bool) -> dict:
    importlib.import_module("vllm")  # first: importing vLLM configures its logger, dropping handlers added before

    lines = Lines()
    logging.getLogger("vllm").addHandler(lines)
    busy = Busy(gpu)
    rate = pipeline.engine_only(manifest, overrides, config, on_start=busy.start, stats=True)
    share = busy.stop()  # started with the timed call
    logging.getLogger("vllm").removeHandler(lines)
    return {"clips_s": round(rate, 2), "gpu_busy_pct": share, "engine_running_reqs": batches(lines.lines)}


def transformers_generate(manifest: str, config: str, overrides: list[str], gpu: bool, clips: int,
                          batch: int = 32) -> dict:
    """Qwen2AudioForConditionalGeneration.generate, greedy, at `batch` clips a call, on `clips` clips."""
    import torch
    from transformers import AutoConfig, AutoProcessor, Qwen2AudioForConditionalGeneration

    prompt, waves, cfg = pipeline.requests(manifest, overrides, config)
    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    with torch.device(device):  # random weights made on the device: a 7B on the host would take minutes
        model = Qwen2AudioForConditionalGeneration._from_config(AutoConfig.from_pretrained(cfg.model.path),
                                                                dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(cfg.model.path)
    tokens = cfg.sampling.max_tokens

    def call(part):
        inputs = processor(text=[prompt] * len(part), audio=part, sampling_rate=16000, return_tensors="pt",
                           padding=True).to(device)
        inputs["input_features"] = inputs["input_features"].to(dtype)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    call(waves[:2])  # warm-up
    busy = Busy(gpu)
    busy.start()
    waves = waves[:clips]
    t0 = time.time()
    for k in range(0, len(waves), batch):
        call(waves[k:k + batch])
    elapsed = time.time() - t0
    return {"clips_s": round(len(waves) / elapsed, 2), "gpu_busy_pct": busy.stop(), "batch": batch,
            "clips": len(waves)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny Qwen2-Audio on CPU (the demo config's engine)")
    ap.add_argument("--clips", type=int, help="clips for the job and LLM.generate (default 512; --tiny 64)")
    ap.add_argument("--hf-clips", type=int, help="clips for transformers generate (default 128; --tiny 32)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, help="default 64; --tiny 16")
    a = ap.parse_args()
    os.environ["VLLM_LOG_STATS_INTERVAL"] = "1"  # before vLLM reads it: its stats line every second
    clips = a.clips or (64 if a.tiny else 512)
    hf_clips = a.hf_clips or (32 if a.tiny else 128)
    tokens = a.max_tokens or (16 if a.tiny else 64)
    sampling = [f"sampling.max_tokens={tokens}", "sampling.min_tokens=0", "sampling.ignore_eos=true",
                'engine.env.VLLM_LOG_STATS_INTERVAL="1"']
    with tempfile.TemporaryDirectory() as folder:
        if a.tiny:
            config, overrides = pipeline.DEMO, [*sampling, "write.rows_per_file=16", "engine.batch_size=16",
                                                "decode.batch_size=16"]
        else:
            config = os.path.join(ROOT, "configs", "caption.yaml")
            overrides = [*sampling, f"model.path={shape_7b(folder)}", "engine.args.load_format=dummy",
                         "engine.num_gpus=1", "write.rows_per_file=64"]
        manifest = pipeline.make_clips(folder, clips, a.seconds)
        results = {"job": job(manifest, os.path.join(folder, "out"), config, overrides, not a.tiny),
                   "llm_generate": engine(manifest, config, overrides, not a.tiny),
                   "transformers_generate": transformers_generate(manifest, config, overrides, not a.tiny, hf_clips)}
    print(f"{'tiny Qwen2-Audio on CPU' if a.tiny else 'Qwen2-Audio-7B shape, dummy weights'}: {clips} clips x "
          f"{a.seconds:g} s, {tokens} tokens each")
    for name, r in results.items():
        print(json.dumps({"side": name, **r}))
    job_, llm = results["job"]["clips_s"], results["llm_generate"]["clips_s"]
    print(f"RESULT job_over_llm_generate={job_ / llm:.2f} job_over_transformers="
          f"{job_ / results['transformers_generate']['clips_s']:.2f} job_gpu_busy_pct={results['job']['gpu_busy_pct']}")


if __name__ == "__main__":
    main()
