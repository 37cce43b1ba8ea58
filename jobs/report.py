"""What a person looks at after a run, drawn from the ledger (so it agrees with the parquet and the summary):

- `_report.html`, the review page: one self-contained file (figures and audio inline, no network, at most
  about 5 MB) with the run's figures, its stages, errors by kind with their first message, quality flags,
  and a seeded random sample of up to 50 rows, each with a player for the row's own window of audio, its
  text and flags; rows with errors or flags can be shown or hidden.
- `_report.png`: the same figures for terminals and CI logs.
"""
from __future__ import annotations

import base64
import html
import io

REPORT, PAGE = "_report.png", "_report.html"
SAMPLE = 50  # rows on the review page
AUDIO_BUDGET = 3_500_000  # bytes of embedded audio: the page stays under about 5 MB
PLAYER_RATE = 16_000
PLAYER = {"format": "MP3", "subtype": "MPEG_LAYER_III", "compression_level": 0.9}  # soundfile's, for `clip`


def figures(ledger, summary: dict):
    """Throughput since the run started, clip durations and errors by kind, as one matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from operators.ledger import DURATION_BINS

    commits = ledger.commits()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    if commits:
        times, rows = np.array(commits).T
        start = summary.get("started_at", times[0])
        x, y = np.r_[min(0.0, times[0] - start), times - start], np.r_[0, np.cumsum(rows)]
        a.step(x, y, where="post", marker="o")  # from the run's start: one commit is still a line
    a.set(title="output rows committed", xlabel="seconds since the run started", ylabel="rows")
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
    return buf.getvalue()


def draw(ledger, summary: dict) -> str:
    """Write `_report.png` and `_report.html` next to the output; returns the page's path."""
    from operators.ledger import output_fs

    png = figures(ledger, summary)
    fs, root = output_fs(ledger.output)
    with fs.open(f"{root}/{REPORT}", "wb") as f:
        f.write(png)
    with fs.open(f"{root}/{PAGE}", "w") as f:
        f.write(page(ledger, summary, png))
    return f"{ledger.output.rstrip('/')}/{PAGE}"


def clip(row: dict) -> bytes | None:
    """The row's window of audio as MP3, or None without one. MP3 because every browser plays it (Safari too)
    and its LAME header makes a player's duration the window's to the sample. The driver encodes up to SAMPLE
    windows after the run: libsndfile writes MP3 ~5x faster than Ogg Opus, for a fifth more bytes
    (bench/report.py; 1.3 CPU-s a 30 s window as Opus on a small box)."""
    import numpy as np
    import soundfile as sf

    from operators.decode import DecodeError, window

    audio, start, end = row.get("audio"), row.get("segment_start_s"), row.get("segment_end_s")
    try:
        if isinstance(audio, dict) and audio.get("bytes"):  # an export: the window itself
            wave, rate = sf.read(io.BytesIO(audio["bytes"]), dtype="float32")
        elif isinstance(audio, str) and not audio.startswith("[") and start is not None and end is not None:
            wave, rate = window(audio, start, end, PLAYER_RATE), PLAYER_RATE
        else:
            return None
    except (DecodeError, sf.LibsndfileError, OSError, ValueError):
        return None
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1, 1), rate, **PLAYER)
    return buf.getvalue()


STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
.err{color:#a00}.flag{background:#fde8c8;border-radius:3px;padding:0 4px;margin-right:4px}
img{max-width:100%}.text{max-width:48em;white-space:pre-wrap;overflow-wrap:anywhere}"""
SCRIPT = """function refresh(){const e=document.getElementById('show-errors').checked,f=document.getElementById(
'show-flagged').checked;document.querySelectorAll('tr.row').forEach(r=>{r.style.display=(r.dataset.error==='1'&&!e)||
(r.dataset.flagged==='1'&&!f)?'none':''})}"""


def page(ledger, summary: dict, png: bytes) -> str:
    column = summary.get("column") or "caption"
    e = html.escape
    head = [("rows in", summary["rows_in"]), ("rows out", summary["rows_out"]), ("output rows", summary["output_rows"]),
            ("ok", summary["rows_ok"]), ("errors", summary["rows_error"]), ("resumed", summary["rows_resumed"]),
            ("audio hours", f"{summary['audio_hours']:.4f}"), ("wall", f"{summary['wall_s']:.1f} s"),
            ("output rows/s", f"{summary['output_rows_per_s']:.3f}"), ("tokens/s", summary.get("output_tokens_per_s", 0)),
            ("model", summary.get("model")), ("prompts", ", ".join(summary.get("prompts", [])))]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>earmark run {e(str(summary['run_id']))}</title>"
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
             f"<h1>{e(ledger.output)}</h1><table>" + "".join(f"<tr><th>{k}</th><td>{e(str(v))}</td></tr>" for k, v in head)
             + "</table>", f"<img alt='figures' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
             "<h2>Stages</h2><table><tr><th>stage</th><th>span s</th><th>busy s</th><th>rows</th></tr>"
             + "".join(f"<tr><td>{e(n)}</td><td>{t['span_s']}</td><td>{t['busy_s']}</td><td>{t['rows_out']}</td></tr>"
                       for n, t in summary["stages"].items()) + "</table>",
             "<h2>Errors by kind</h2><table id='errors'><tr><th>kind</th><th>rows</th><th>first message</th></tr>"
             + "".join(f"<tr><td>{e(k)}</td><td>{n}</td><td class='err'>{e(summary['first_error_by_kind'].get(k, ''))}"
                       f"</td></tr>" for k, n in summary["errors_by_kind"].items()) + "</table>"]
    if "flags" in summary:
        kept = f"kept {summary['rows_kept']} of {summary['output_rows']} rows" if "rows_kept" in summary else ""
        parts.append(f"<h2>Quality</h2><p>{kept}</p><table id='flags'>"
                     "<tr><th>flag</th><th>rows</th></tr>"
                     + "".join(f"<tr><td>{e(k)}</td><td>{n}</td></tr>" for k, n in summary["flags"].items()) + "</table>")
    rows = ledger.sample(SAMPLE, 0, ["id", "output_id", "audio", "segment_start_s", "segment_end_s", column, "error",
                                     "flags", "prompt_id"])
    parts.append(f"<h2>Sample</h2><p>{0 if rows is None else rows.num_rows} rows drawn at random (seed 0). "
                 "<label><input type='checkbox' id='show-errors' checked onchange='refresh()'> rows with errors</label> "
                 "<label><input type='checkbox' id='show-flagged' checked onchange='refresh()'> rows with flags</label></p>"
                 "<table id='sample'><tr><th>row</th><th>window</th><th>audio</th><th>text</th><th>flags</th></tr>")
    budget, sounds = AUDIO_BUDGET, {}
    for r in (rows.to_pylist() if rows is not None else []):
        # The prompts of one window share its player: fetched, cut and encoded once.
        key = (str(r.get("audio")), r.get("segment_start_s"), r.get("segment_end_s"))
        if r.get("error") is None and key not in sounds:
            sounds[key] = clip(r)
        sound = sounds.get(key) if r.get("error") is None else None
        player = "—"
        if sound and len(sound) * 4 // 3 <= budget:
            budget -= len(sound) * 4 // 3
            player = (f"<audio controls preload='metadata' data-window='{r['segment_end_s'] - r['segment_start_s']:.3f}' "
                      f"src='data:audio/mpeg;base64,{base64.b64encode(sound).decode()}'></audio>")
        flags = r.get("flags") or []
        text = r.get(column)
        where = ("" if r.get("segment_start_s") is None else
                 f"{r['segment_start_s']:.2f}–{r['segment_end_s']:.2f} s")
        parts.append(f"<tr class='row' data-error='{int(r.get('error') is not None)}' data-flagged='{int(bool(flags))}'>"
                     f"<td>{e(str(r.get('output_id') or r.get('id')))}</td><td>{where}</td><td>{player}</td>"
                     f"<td class='text'>{e(str(text)) if r.get('error') is None else ''}"
                     f"<span class='err'>{e(r.get('error') or '')}</span></td>"
                     f"<td>{''.join(f'<span class=flag>{e(f)}</span>' for f in flags)}</td></tr>")
    parts.append("</table></body></html>")
    return "".join(parts)


NIGHT_PAGE = "_night.html"


def night_figure(nights: list[dict], funnels: list[list[tuple[str, int]]]) -> bytes:
    """This night's funnel, and every funnel stage per night so far, as one matplotlib figure (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4))
    names, counts = zip(*funnels[-1]) if funnels[-1] else ((), ())
    a.barh(list(names)[::-1], list(counts)[::-1])
    for y, n in enumerate(list(counts)[::-1]):
        a.annotate(str(n), (n, y), xytext=(3, 0), textcoords="offset points", va="center")
    a.set(title=f"night {nights[-1]['night']}: rows through the steps", xlabel="rows")
    x = [n["night"] for n in nights]
    for k, name in enumerate(names):
        b.plot(x, [dict(f).get(name, 0) for f in funnels], marker="o", label=name)
    b.set(title="per night", xlabel="night", ylabel="rows", xticks=x)
    b.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def night_page(root: str, nights: list[dict], funnels: list[list[tuple[str, int]]]) -> str:
    """The night's page: self-contained like the review pages; links to each step's review page (relative)."""
    from jobs.night import new

    e, last = html.escape, nights[-1]
    before = nights[-2] if len(nights) > 1 else None
    png = base64.b64encode(night_figure(nights, funnels)).decode()
    steps = "".join(
        f"<tr><td><a href='{e(s['name'])}/{PAGE}'>{e(s['name'])}</a></td><td>{e(s['job'])}</td>"
        f"<td>{e(s.get('status', ''))}</td><td>{s['wall_s']:.1f}</td><td>{new(s, before, 'rows_out')}</td>"
        f"<td>{new(s, before, 'output_rows')}</td></tr>" for s in last["steps"])
    funnel = "".join(f"<tr><td>{e(name)}</td><td>{n}</td></tr>" for name, n in funnels[-1])
    history = "".join(
        f"<tr><td>{n['night']}</td><td>{e(n['started_at'])}</td><td>{e(n['status'])}</td><td>{n['attempts']}</td>"
        f"<td>{n['wall_s']:.1f}</td>" + "".join(f"<td>{c}</td>" for _, c in f) + "</tr>" for n, f in zip(nights, funnels))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>earmark night {last['night']}</title>"
            f"<style>{STYLE}</style></head><body><h1>{e(root)}: night {last['night']} ({e(last['status'])})</h1>"
            f"<img alt='funnel' src='data:image/png;base64,{png}'>"
            f"<h2>This night</h2><table id='funnel'><tr><th>stage</th><th>rows</th></tr>{funnel}</table>"
            "<h2>Steps</h2><table id='steps'><tr><th>step (review page)</th><th>job</th><th>status</th><th>wall s</th>"
            f"<th>input rows this night</th><th>output rows this night</th></tr>{steps}</table>"
            "<h2>Nights</h2><table id='nights'><tr><th>night</th><th>started</th><th>status</th><th>attempts</th>"
            "<th>wall s</th>" + "".join(f"<th>{e(name)}</th>" for name, _ in funnels[-1]) + f"</tr>{history}</table>"
            "</body></html>")
