"""The caption job as on a cluster: submitted with `ray job submit` to a Ray head started here, reading
manifests and audio from S3 and writing parquet back to S3. The S3 API is moto's server on 127.0.0.1;
s3fs talks to it over HTTP as it would to AWS (nothing is mocked in-process)."""
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import S3_SECRET as SECRET, free_port

BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def s3(assets, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("earmark")
    samples = assets["samples"]
    for name in os.listdir(samples):
        if name != "manifest.jsonl":
            fs.put(os.path.join(samples, name), f"earmark/audio/{name}")
    lines = [json.loads(line) for line in open(assets["manifest"])]
    shards = [lines[: len(lines) // 2], lines[len(lines) // 2:]]
    for k, shard in enumerate(shards):  # audio paths relative to the manifests' folder
        body = "".join(json.dumps({**r, "audio": f"../audio/{r['audio']}"}) + "\n" for r in shard)
        fs.pipe(f"earmark/manifests/shard-{k}.jsonl", body.encode())
    return {**s3_server, "fs": fs, "rows": len(lines)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head in its own process group (`ray start --block`), so that stopping it stops only it, not
    other Ray instances on the machine (`ray stop` would)."""
    import urllib.error
    import urllib.request

    port, dash = free_port(), free_port()
    start = [os.path.join(BIN, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2"]
    # As on a cluster node where the project is installed: `python` is the project's environment.
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    head = subprocess.Popen(start, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        for _ in range(240):
            assert head.poll() is None, open(log.name).read()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # up, if only to ask for the token
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # a head stops its processes one by one, in half a minute; what is left after 10 s is killed
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        # `ray start` records the head here for later `ray.init()` calls; it is gone now.
        current = "/tmp/ray/ray_current_cluster"
        if os.path.exists(current) and f":{port}" in open(current).read():
            os.remove(current)


def test_ray_job_submit_reads_and_writes_s3(s3, cluster, assets):
    # Ray 2.60 heads enable token auth; the CLI sends the head's token (~/.ray/auth_token) in token mode.
    env = {**os.environ, **s3["env"], "RAY_ADDRESS": cluster, "RAY_AUTH_MODE": "token"}
    env.pop("AWS_ENDPOINT_URL_S3")  # the job gets its endpoint from the config, as a user would set it
    cmd = [os.path.join(BIN, "ray"), "job", "submit", "--working-dir", ".", "--",
           "python", "-m", "jobs.caption", "--config", "configs/caption-demo.yaml",
           "--input", "s3://earmark/manifests/*.jsonl", "--output", "s3://earmark/out/",
           f"storage.endpoint_url={s3['endpoint']}", f"model.path={assets['model']}", "sampling.max_tokens=8"]
    for _ in range(30):  # the head's job agent comes up a little after its dashboard answers
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        logs = proc.stdout + proc.stderr
        if "No available agent to submit job" not in logs:
            break
        time.sleep(2)
    assert proc.returncode == 0, logs[-4000:]
    assert "succeeded" in logs.lower()
    assert SECRET not in logs
    fs = s3["fs"]
    fs.invalidate_cache()
    assert fs.exists("earmark/out/_SUCCESS")
    summary = json.loads(fs.cat("earmark/out/_summary.json"))
    assert summary["rows_in"] == summary["rows_out"] == s3["rows"]
    assert summary["errors_by_kind"] == {"decode/missing": 1, "decode/not_audio": 1}
    rows = [r for p in fs.glob("earmark/out/part-*.parquet") for r in pq.read_table(fs.open(p)).to_pylist()]
    assert len({(r["source_manifest"], r["source_row"]) for r in rows}) == s3["rows"]
    assert all(r["audio"].startswith("s3://earmark/audio/") for r in rows)
    assert all(r["caption"] for r in rows if r["error"] is None)
    missing = next(r for r in rows if r["id"] == "missing")
    assert missing["error"] == "decode/missing: s3://earmark/audio/missing.wav: no such file"
    assert not any(SECRET in json.dumps(r, default=str) for r in rows)
