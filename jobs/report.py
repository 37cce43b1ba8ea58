"""The run report: a PNG next to the output with throughput over time, the duration histogram and the
error breakdown, drawn from the ledger (so it agrees with the parquet and `_summary.json`)."""
from __future__ import annotations

REPORT = "_report.png"


def draw(ledger, summary: dict) -> str:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from operators.ledger import DURATION_BINS, output_fs

    commits = ledger.commits()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    if commits:
        times, rows = np.array(commits).T
        a.step(times - times[0], np.cumsum(rows), where="post", marker="o")  # markers: one commit still shows
    a.set(title="output rows committed", xlabel="seconds since first commit", ylabel="rows")
    b.stairs(ledger.durations(), DURATION_BINS, fill=True)  # each input row once, whatever its windows and prompts
    b.set(title="clip duration", xlabel="seconds", ylabel="clips", xscale="log")
    kinds = summary["errors_by_kind"] or {"(none)": 0}
    c.barh(list(kinds), list(kinds.values()))
    c.set(title=f"errors: {summary['rows_error']} of {summary['output_rows']} rows", xlabel="rows")
    fig.suptitle(f"run {summary['run_id']}: {summary['rows_in']} rows in, {summary['rows_out']} out, "
                 f"{summary['audio_hours'] * 3600:.0f} s of audio, {summary['wall_s']:.0f} s wall")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    fs, root = output_fs(ledger.output)
    with fs.open(f"{root}/{REPORT}", "wb") as f:
        f.write(buf.getvalue())
    return f"{ledger.output.rstrip('/')}/{REPORT}"
