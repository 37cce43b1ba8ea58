"""Pipeline efficiency on CPU with the tiny model: clips/s of the whole caption job (Ray Data, decode
actors, prompt stage, async engine actor, parquet commits) vs the same vLLM engine fed pre-decoded audio
in one `LLM.generate` call (the ceiling). Same clips, same sampling (fixed max_tokens, ignore_eos).

    python bench/pipeline.py [--clips 200] [--seconds 5] [--max-tokens 32] [--runs 3]

The job's rate is taken in steady state, from the first to the last committed file (engine start-up is
excluded on both sides). Both sides get the same engine arguments and environment (the demo config's).
The ratio varies from run to run on a small box (the job's side most): each run is printed, then the
median. Needs `make assets` first.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEMO = os.path.join(ROOT, "configs", "caption-demo.yaml")


def make_clips(folder: str, n: int, seconds: float) -> str:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        t = np.arange(int(44100 * seconds)) / 44100
        x = 0.2 * np.sin(2 * np.pi * (200 + 5 * i) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(os.path.join(folder, f"c{i}.flac"), np.stack([x, 0.8 * x], axis=1), 44100)
        rows.append(json.dumps({"id": f"c{i}", "audio": f"c{i}.flac"}))
    with open(os.path.join(folder, "m.jsonl"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return os.path.join(folder, "m.jsonl")


def pipeline(manifest: str, out: str, overrides: list[str], config_path: str = DEMO) -> float:
    from jobs import caption
    from jobs.runner import run
    from operators import config

    cfg = config.load(config_path, overrides, input=manifest, output=out)
    summary = run(cfg, caption.JOB, fresh=True)
    assert summary["rows_ok"] == summary["rows_in"], summary
    files = [os.path.join(out, f) for f in os.listdir(out) if f.startswith("part-")]
    stamps = sorted((os.stat(f).st_mtime, sf_rows(f)) for f in files)
    rows_after_first = sum(n for _, n in stamps[1:])
    return rows_after_first / (stamps[-1][0] - stamps[0][0])


def sf_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def requests(manifest: str, overrides: list[str], config_path: str = DEMO):
    """(the rendered prompt, every clip decoded at the model's rate, the config): what the engine is fed."""
    from transformers import AutoProcessor

    from operators import config
    from operators.conversation import instruction, with_system
    from operators.decode import load
    from operators.models import spec
    from operators.prompt import render

    cfg = config.load(config_path, overrides, input=manifest, output="unused")
    model = spec(cfg.model.family)
    (ask,) = config.prompts(cfg).values()
    prompt = render(AutoProcessor.from_pretrained(cfg.model.path), model,
                    with_system(instruction(1, ask.instruction), ask.system or cfg.prompt.system))
    folder = os.path.dirname(manifest)
    rows = [json.loads(line) for line in open(manifest)]
    return prompt, [load(os.path.join(folder, r["audio"]), model.sample_rate)[0] for r in rows], cfg


def engine_only(manifest: str, overrides: list[str], config_path: str = DEMO, on_start=None,
                stats: bool = False) -> float:
    """clips/s of one `LLM.generate` call over every clip, after a warm-up call; the job's engine arguments
    and environment. `on_start`: called as the timed call starts; `stats`: vLLM logs its engine stats."""
    from vllm import LLM, SamplingParams

    from operators.generate import engine_args, sampling_args
    from operators.models import spec

    prompt, waves, cfg = requests(manifest, overrides, config_path)
    os.environ.update(cfg.engine.env)
    model = spec(cfg.model.family)
    llm = LLM(**engine_args(cfg, model), **({"disable_log_stats": False} if stats else {}))
    feed = [{"prompt": prompt, "multi_modal_data": {"audio": [(w, model.sample_rate)]}} for w in waves]
    params = SamplingParams(**sampling_args(cfg))
    llm.generate(feed[:4], params, use_tqdm=False)  # warm-up
    if on_start is not None:
        on_start()
    t0 = time.time()
    outs = llm.generate(feed, params, use_tqdm=False)
    elapsed = time.time() - t0
    llm.llm_engine.engine_core.shutdown()  # else the engine-core process keeps this script from exiting
    assert all(len(o.outputs[0].token_ids) == cfg.sampling.max_tokens for o in outs)
    return len(feed) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    overrides = [f"sampling.max_tokens={a.max_tokens}", "sampling.ignore_eos=true", "sampling.min_tokens=0",
                 "write.rows_per_file=16", "engine.batch_size=16", "decode.batch_size=16"]
    print(f"clips {a.clips} x {a.seconds:g} s, {a.max_tokens} tokens each")
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        manifest = make_clips(folder, a.clips, a.seconds)
        for k in range(a.runs):
            job = pipeline(manifest, os.path.join(folder, f"out{k}"), overrides)
            import ray

            ray.shutdown()
            ceiling = engine_only(manifest, overrides)
            ratios.append(job / ceiling)
            print(f"run {k + 1}: pipeline (steady state) {job:.2f} clips/s, engine only (one generate call) "
                  f"{ceiling:.2f} clips/s, ratio {job / ceiling:.2f}", flush=True)
    print(f"RESULT pipeline_over_engine_median={statistics.median(ratios):.2f} "
          f"runs={','.join(f'{r:.2f}' for r in ratios)}")

if __name__ == "__main__":
    main()
