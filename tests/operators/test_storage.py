"""Storage problems say what to fix, in one line, before any work: the job's own command against moto's S3
server (and a second one that enforces IAM, for access denied). Exit 2, no traceback, no credential."""
import os
import re
import subprocess
import sys
import time

import pytest

from operators import storage
from tests.conftest import S3_SECRET, free_port

CMD = [sys.executable, "-m", "jobs.caption", "--config", "configs/caption-demo.yaml"]


@pytest.fixture(scope="module")
def bucket(s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("storage-test")
    fs.pipe("storage-test/m.jsonl", b'{"audio": "a.wav"}\n')
    fs.pipe("storage-test/empty.jsonl", b"")
    fs.pipe("storage-test/garbage.jsonl", bytes(range(256)) * 4)
    fs.pipe("storage-test/bad.parquet", b"not a parquet file")
    yield {**s3_server, "fs": fs}
    fs.rm("storage-test", recursive=True)


def job(*args, env=None, timeout=120):
    t0 = time.time()
    proc = subprocess.run(CMD + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc, time.time() - t0


def one_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert S3_SECRET not in proc.stderr + proc.stdout
    return lines[0]


@pytest.mark.parametrize("args,expected", [
    (["--input", "s3://no-such-bucket-here/m.jsonl"], "input: no such bucket 'no-such-bucket-here'"),
    (["--input", "s3://storage-test/empty.jsonl"], "input: s3://storage-test/empty.jsonl is empty (0 bytes)"),
    (["--input", "s3://storage-test/garbage.jsonl"], "input: s3://storage-test/garbage.jsonl is not JSON lines"),
    (["--input", "s3://storage-test/bad.parquet"], "input: s3://storage-test/bad.parquet is not a parquet file"),
    (["--input", "s3://storage-test/none-*.jsonl"], "input: no manifest matches 's3://storage-test/none-*.jsonl'"),
    (["--input", "s3://storage-test/m.jsonl", "--output", "s3://no-such-out-bucket/x"],
     "output: no such bucket 'no-such-out-bucket'"),
])
def test_each_problem_is_one_line_naming_the_key(bucket, args, expected):
    proc, _ = job(*(args if "--output" in args else [*args, "--output", "s3://storage-test/out"]))
    assert one_line(proc).startswith(f"config error: {expected}")


def test_no_credentials(bucket):
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
    proc, _ = job("--input", "s3://storage-test/m.jsonl", "--output", "s3://storage-test/out", env=env)
    assert one_line(proc).startswith("config error: input: no AWS credentials to read s3://storage-test/m.jsonl; set "
                                     "AWS_ACCESS_KEY_ID")


def test_an_endpoint_that_refuses_is_said_at_once(bucket):
    closed = f"http://127.0.0.1:{free_port()}"
    proc, took = job("--input", "s3://storage-test/m.jsonl", "--output", "s3://storage-test/out",
                     f"storage.endpoint_url={closed}")
    assert one_line(proc).startswith(f"config error: input: cannot reach {closed} for s3://storage-test/m.jsonl; "
                                     "check storage.endpoint_url")
    assert took < 60  # one try, not minutes of retries


def test_an_output_that_cannot_be_written(bucket, tmp_path):
    (tmp_path / "a-file").write_text("x")
    proc, _ = job("--input", "s3://storage-test/m.jsonl", "--output", str(tmp_path / "a-file" / "out"))
    assert one_line(proc).startswith(f"config error: output: cannot use {tmp_path}/a-file/out:")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """moto enforcing IAM after its first actions: a bucket, and credentials of a user with no permissions."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    for _ in range(100):
        try:
            boto3.client("s3", **kw).create_bucket(Bucket="guarded")
            break
        except Exception:  # noqa: BLE001 - the server is starting
            time.sleep(0.2)
    boto3.client("s3", **kw).put_object(Bucket="guarded", Key="m.jsonl", Body=b'{"audio": "a.wav"}\n')
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    yield {"endpoint": endpoint, "env": {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                                         "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}}
    server.kill()


def test_access_denied(guarded):
    proc, _ = job("--input", "s3://guarded/m.jsonl", "--output", "s3://guarded/out",
                  f"storage.endpoint_url={guarded['endpoint']}", env=guarded["env"])
    line = one_line(proc)
    assert line.startswith("config error: input: access denied to s3://guarded/m.jsonl; give these credentials "
                           "s3:ListBucket and s3:GetObject")
    assert guarded["env"]["AWS_SECRET_ACCESS_KEY"] not in proc.stderr


def test_a_bucket_in_another_region_names_storage_region():
    """What S3 answers for a bucket in another region (moto does not check regions, so the error is made here)."""
    from botocore.exceptions import ClientError

    e = ClientError({"Error": {"Code": "AuthorizationHeaderMalformed", "Message": "the region 'us-east-1' is wrong; "
                               "expecting 'eu-west-1'"}}, "ListObjectsV2")
    assert storage.explain(e, "input", "s3://far/m.jsonl").startswith(
        "input: bucket 'far' is in another region than the client's")
    assert "set storage.region to the bucket's region" in storage.explain(e, "input", "s3://far/m.jsonl")


def test_one_bad_line_is_the_row_s_error_not_the_manifest_s(tmp_path):
    """A manifest whose first line is broken still runs (that line becomes read/bad_json); a file with no JSON
    object in its head is refused."""
    import fsspec

    fs = fsspec.filesystem("file")
    good = tmp_path / "m.jsonl"
    good.write_text('{not json\n{"audio": "a.wav"}\n')
    storage.check_manifest(fs, str(good), str(good))
    for name, text in [("csv.jsonl", "id,audio\n1,a.wav\n"), ("array.jsonl", '[{"audio": "a.wav"}]\n'),
                       ("blank.jsonl", "\n \n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(storage.StorageError, match="is not JSON lines"):
            storage.check_manifest(fs, str(tmp_path / name), str(tmp_path / name))


@pytest.fixture
def flaky(bucket, monkeypatch):
    """The S3 server behind the fault proxy (tests/s3faults.py), as the job's endpoint."""
    from tests.s3faults import FaultProxy

    proxy = FaultProxy(bucket["endpoint"], slow_down=0.2, internal=0.1, seed=7)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    yield proxy
    proxy.stop()


def test_the_checks_retry_a_flaky_store_and_never_call_it_a_config_error(flaky):
    """20 % SlowDown, 10 % InternalError after the store did the request: s3fs alone retries SlowDown only,
    and one 500 ended the output check as a config error."""
    for k in range(10):
        storage.check_input("s3://storage-test/m.jsonl")
        storage.check_output(f"s3://storage-test/out-{k}")
    assert flaky.counts["slow_down"] > 10 and flaky.counts["internal"] > 5, flaky.counts


def test_a_store_failing_every_retry_is_a_storage_failure_in_one_line(flaky):
    flaky.set(slow_down=0.0, internal=1.0)
    proc, _ = job("--input", "s3://storage-test/m.jsonl", "--output", "s3://storage-test/out",
                  env={"AWS_ENDPOINT_URL_S3": flaky.url})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.match(r"storage failure: s3://storage-test/m.jsonl: the store still answers (InternalError|500) after "
                    r"every retry \(input\)", lines[0]), lines[0]
    assert S3_SECRET not in proc.stderr + proc.stdout
