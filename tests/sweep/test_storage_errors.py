"""Bad --storage / --resume values are refused before anything is written or Ray starts, with a message naming the
flag, the value and what is allowed: an unknown URI scheme, an S3 endpoint that refuses connections, a bucket that
does not exist, wrong S3 credentials (a moto server in a subprocess with its IAM checks on). Also the URI helpers
(a query such as ?endpoint_override=... stays at the end of joined paths) and the copy code on such a URI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fake_engine
import pytest
from s3_support import create_bucket

from hpcm_tune.sweep import cli, launcher
from hpcm_tune.sweep import parents as pa
from hpcm_tune.sweep import space as sp

moto_server = pytest.importorskip("moto.server")  # dev dependency: moto[server]
BUCKET = "hpcm-errors"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (this process) with one bucket; yields its endpoint HOST:PORT."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    create_bucket(endpoint, BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    """Test credentials, no endpoint from the environment (each test names its own)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def named(flag: str, value: str) -> str:
    """How a SpaceError names a flag and its value (hpcm_tune.safe_yaml.excerpt quotes the value)."""
    from hpcm_tune.safe_yaml import excerpt

    return f"{flag} = {excerpt(value)}"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = cli.main([*argv, "-q"], engine=fake_engine.NAME)
    return rc, capsys.readouterr().err


def test_join_keeps_a_uri_query_at_the_end():
    uri = "s3://b/pre?endpoint_override=127.0.0.1:9000&scheme=http"
    assert launcher.join(uri, "exp", "hpcm_tune.json") == \
        "s3://b/pre/exp/hpcm_tune.json?endpoint_override=127.0.0.1:9000&scheme=http"
    assert launcher.basename(launcher.join(uri, "exp")) == "exp"
    assert launcher.dirname(launcher.join(uri, "exp")) == uri
    assert launcher.storage_root("s3://b/pre/") == "s3://b/pre"
    assert launcher.join("/tmp/x/", "y") == "/tmp/x/y" and launcher.basename("/tmp/x/y/") == "y"


def test_unknown_scheme_is_refused_naming_flag_value_and_choices(tmp_path, capsys):
    rc, err = run_cli(["--storage", "ftp://host/results", "--name", "x"], capsys)
    assert rc == 2
    assert named("--storage", "ftp://host/results") in err
    assert "unknown URI scheme ftp://" in err and "s3://BUCKET" in err


def test_a_local_storage_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, err = run_cli(["--storage", str(tmp_path / "file" / "results"), "--name", "x"], capsys)
    assert rc == 2 and "is a file, not a directory" in err and not (tmp_path / "file" / "results").exists()


def test_refused_connection_is_reported_before_anything_starts(aws_env, capsys):
    uri = f"s3://{BUCKET}/results?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    start = time.monotonic()
    rc, err = run_cli(["--storage", uri, "--name", "x"], capsys)
    assert rc == 2, err
    assert named("--storage", uri) in err and "cannot" in err and "AWS_ENDPOINT_URL" in err
    assert "onnect" in err  # curl's "Could not connect" / "Connection refused"
    assert time.monotonic() - start < 60


def test_missing_bucket_is_reported_for_a_sweep_a_resume_and_a_dry_run(s3, aws_env, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3}")  # the variable form of the endpoint
    rc, err = run_cli(["--storage", "s3://no-such-bucket/results", "--name", "x"], capsys)
    assert rc == 2 and named("--storage", "s3://no-such-bucket/results") in err
    assert "the bucket 'no-such-bucket' does not exist" in err
    rc, err = run_cli(["--resume", "s3://no-such-bucket/results/x"], capsys)
    assert rc == 2 and named("--resume", "s3://no-such-bucket/results/x") in err and "does not exist" in err
    rc, err = run_cli(["--storage", "s3://no-such-bucket/results", "--dry-run"], capsys)
    assert rc == 2 and "does not exist" in err
    # The bucket that exists passes the same checks; an empty prefix has no experiment to resume.
    launcher.check_storage(f"s3://{BUCKET}/results")
    rc, err = run_cli(["--resume", f"s3://{BUCKET}/results/x"], capsys)
    assert rc == 2 and "no hpcm-tune experiment" in err


def test_copy_code_and_json_on_an_endpoint_in_the_uri(s3, aws_env, tmp_path):
    """The query form (no AWS_ENDPOINT_URL): write/read JSON, upload a folder with pruning, download it."""
    root = f"s3://{BUCKET}/copy?endpoint_override={s3}&scheme=http"
    launcher.write_json(launcher.join(root, "e", "a.json"), {"x": 1})
    assert launcher.read_json(launcher.join(root, "e", "a.json")) == {"x": 1}
    assert launcher.exists(launcher.join(root, "e")) and not launcher.exists(launcher.join(root, "f"))
    src = tmp_path / "run"
    for epoch in (1, 2, 3):
        (src / "checkpoints" / f"epoch_{epoch:06d}").mkdir(parents=True)
        (src / "checkpoints" / f"epoch_{epoch:06d}" / "state.pt").write_bytes(b"w" * epoch)
    remote = launcher.join(root, "parent")
    pa.copy_tree(str(src), remote, prune="checkpoints")
    import shutil

    shutil.rmtree(src / "checkpoints" / "epoch_000001")  # the engine keeps the newest two
    pa.copy_tree(str(src), remote, prune="checkpoints")
    local = Path(pa.fetch(remote, tmp_path / "down"))
    assert local.name == "parent"
    assert sorted(p.name for p in (local / "checkpoints").iterdir()) == ["epoch_000002", "epoch_000003"]
    assert (local / "checkpoints" / "epoch_000003" / "state.pt").read_bytes() == b"www"


@pytest.fixture(scope="module")
def s3_with_auth(tmp_path_factory):
    """A moto server (its own process: moto's auth switch is global) that checks credentials; yields
    (endpoint, a valid access key, its secret). The bucket, the user and its policy are made before the checks
    are switched on."""
    pytest.importorskip("boto3")
    import boto3

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded machine: moto imports for seconds
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "moto_server did not start"
                time.sleep(0.2)
        kw = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "setup",
              "aws_secret_access_key": "setup"}
        boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="sweeper")
        key = iam.create_access_key(UserName="sweeper")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="sweeper", PolicyName="s3", PolicyDocument=json.dumps(policy))
        request = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=5).close()
        yield f"127.0.0.1:{port}", key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_wrong_credentials_are_reported(s3_with_auth, aws_env, monkeypatch, capsys):
    endpoint, key, secret = s3_with_auth
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{endpoint}")
    uri = f"s3://{BUCKET}/results"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    launcher.check_storage(uri)  # the right key passes, writes included
    for wrong_key, wrong_secret in ((key, "not-the-secret"), ("AKIAUNKNOWN000000000", secret)):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", wrong_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
        rc, err = run_cli(["--storage", uri, "--name", "x"], capsys)
        assert rc == 2, err
        assert named("--storage", uri) in err and "ACCESS_DENIED" in err and "AWS_SECRET_ACCESS_KEY" in err
        with pytest.raises(sp.SpaceError, match="ACCESS_DENIED"):
            launcher.check_storage(uri, write=False)


def test_analyze_names_an_unreadable_uri(s3, aws_env, capsys):
    from hpcm_tune.analysis import cli as analyze

    uri = f"s3://{BUCKET}/nothing-here?endpoint_override={s3}&scheme=http"
    assert analyze.main([uri, "--no-plots", "--no-reference", "--quiet"]) == 2
    assert f"no experiment at {uri}" in capsys.readouterr().err


def test_environment_reaches_pyarrow_in_a_fresh_process(s3, tmp_path):
    """What a Ray worker does: a new process that reads the endpoint and credentials from its environment."""
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{s3}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    code = ("from hpcm_tune.sweep import launcher; "
            f"launcher.write_json('s3://{BUCKET}/fresh/a.json', {{'ok': 1}}); "
            f"print(launcher.read_json('s3://{BUCKET}/fresh/a.json'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "{'ok': 1}" in out.stdout, out.stderr[-2000:]


def test_analysis_reads_experiments_from_s3_as_from_disk(s3, aws_env, tmp_path):
    """load_experiments on an experiment URI, and the latest experiment of a storage URI, read the same trials as
    the local directory; checkpoints are not downloaded."""
    from hpcm_tune.analysis import results
    from hpcm_tune.testing import write_experiment_dir

    trials = [{"config": {"lmbda": lam, "seed": 0, "epochs": 3, "label": "a"}, "epochs_run": n}
              for lam, n in ((0.0067, 3), (0.013, 2))]
    local = write_experiment_dir(tmp_path / "store", "exp1", trials, max_epochs=3)
    (next(p for p in local.iterdir() if p.is_dir()) / "checkpoint_000000").mkdir()
    (next(p for p in local.iterdir() if p.is_dir()) / "checkpoint_000000" / "state.pt").write_bytes(b"x")
    root = f"s3://{BUCKET}/analysis?endpoint_override={s3}&scheme=http"
    pa.copy_tree(str(tmp_path / "store"), root)
    uri = launcher.join(root, "exp1")
    (remote,) = results.load_experiments([uri])
    (disk,) = results.load_experiments([local])
    assert remote.name == "exp1" and remote.source == uri and disk.source is None
    assert sorted((t.trial_id, t.status, t.epochs_run) for t in remote.trials) == \
        sorted((t.trial_id, t.status, t.epochs_run) for t in disk.trials)
    assert not list(remote.path.rglob("checkpoint_*")) and not list(remote.path.rglob("*.pkl"))
    assert results.latest_experiment(root).name == "exp1"
