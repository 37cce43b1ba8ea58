"""Re-check a job's output with the quality rules (and CLAP scores), without generating again.

    python -m jobs.quality --config configs/quality.yaml --input <a job's output> --output <folder> [key=value ...]

Every row of the input output comes out once, with all its columns, `flags` and `keep` recomputed under
the config's rules (configs/rules.yaml, `quality.rules`, the prompts' own changes), and `clap_score` when
`score.enabled`. Users tune thresholds after the GPUs are released. Resumable like every job.
"""
from __future__ import annotations

import sys

from jobs.runner import Job, main


def build(ds, cfg, spec, prompts, column):
    return ds  # the runner's checks (score, quality) are this job's work


JOB = Job(None, build, derived=True, generates=False, determines=("quality", "score"))

if __name__ == "__main__":
    sys.exit(main(JOB, __doc__))
