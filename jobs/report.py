"""The run report: a PNG next to the output with throughput over time, the duration histogram and the
error breakdown, drawn from what is committed (so it agrees with the parquet and `_summary.json`)."""
from __future__ import annotations

REPORT = "_report.png"


def _mtime(info: dict) -> float:
    """Commit time from fsspec file info: `mtime` on local disks, `LastModified` on S3."""
    t = info.get("mtime", info.get("LastModified"))
    return t.timestamp() if hasattr(t, "timestamp") else float(t)


def draw(output: str, summary: dict) -> str:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    from operators.write import PART, output_fs

    fs, root = output_fs(output)
    commits, durations = [], {}
    for path in fs.find(root):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(PART) and name.endswith(".parquet"):
            with fs.open(path, "rb") as f:
                t = pq.read_table(f, columns=["duration_s", "source_manifest", "source_row"])
            commits.append((_mtime(fs.info(path)), t.num_rows))
            for d, m, r in zip(*(t.column(c).to_pylist() for c in t.column_names)):
                if d is not None:
                    durations[(m, r)] = d  # once per input row, whatever its windows and prompts
    commits.sort()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    if commits:
        t0 = commits[0][0]
        done, xs, ys = 0, [], []
        for ts, n in commits:
            done += n
            xs.append(ts - t0)
            ys.append(done)
        a.step(xs, ys, where="post", marker="o")  # markers: a run with one commit is still visible
    a.set(title="output rows committed", xlabel="seconds since first commit", ylabel="rows")
    b.hist(list(durations.values()), bins=30)
    b.set(title="clip duration", xlabel="seconds", ylabel="clips")
    kinds = summary["errors_by_kind"] or {"(none)": 0}
    c.barh(list(kinds), list(kinds.values()))
    c.set(title=f"errors: {summary['rows_error']} of {summary['output_rows']} rows", xlabel="rows")
    fig.suptitle(f"run {summary['run_id']}: {summary['rows_in']} rows in, {summary['rows_out']} out, "
                 f"{summary['audio_hours'] * 3600:.0f} s of audio, {summary['wall_s']:.0f} s wall")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    with fs.open(f"{root}/{REPORT}", "wb") as f:
        f.write(buf.getvalue())
    return f"{output.rstrip('/')}/{REPORT}"
