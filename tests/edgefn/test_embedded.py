"""Embedded services: start and stop in a data folder, data kept across restarts, one user
of a data folder at a time, no process left behind (even when the parent is killed), and
the non-root path (as root the test runs a child as uid 1000 in a user namespace)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from edgefn.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis, EmbeddedS3

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="embedded services are tested on Linux")

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def redis_cmd(url: str, *args: str) -> object:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def test_postgres_start_stop_and_data_persists(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path)
    dsn = pg.start()
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert pg.proc is not None
    first_pid, first_port = pg.proc.pid, pg.port
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create table kept (v int)")
            conn.execute("insert into kept values (42)")
            assert conn.execute("show fsync").fetchone() == ("off",)
    finally:
        pg.stop()
    assert wait_gone([first_pid]) == []
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
    assert (tmp_path / "logs" / "postgres.log").stat().st_size > 0

    # second run: same cluster, same port (remembered), data still there
    again = EmbeddedPostgres(tmp_path)
    dsn2 = again.start()
    try:
        assert again.port == first_port
        with psycopg.connect(dsn2) as conn:
            assert conn.execute("select v from kept").fetchall() == [(42,)]
        # a second user of the same live data folder is a clear error
        with pytest.raises(EmbeddedError, match="another edgefn dev is using"):
            EmbeddedPostgres(tmp_path).start()
    finally:
        again.stop()


def test_postgres_stale_pid_file_is_removed(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path)
    pg.start()
    pg.stop()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "pg" / "postmaster.pid").write_text(f"{dead.pid}\n{tmp_path / 'pg'}\n")
    try:
        with psycopg.connect(pg.start()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        pg.stop()


def test_redis_start_stop_and_second_user(tmp_path: Path) -> None:
    rd = EmbeddedRedis(tmp_path)
    url = rd.start()
    assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
    assert rd.proc is not None
    pid = rd.proc.pid
    try:
        assert redis_cmd(url, "SET", "k", "v") is True
        assert redis_cmd(url, "GET", "k") == b"v"
        assert redis_cmd(url, "CONFIG", "GET", "bind") == {b"bind": b"127.0.0.1"}
        with pytest.raises(EmbeddedError, match="another edgefn dev is using"):
            EmbeddedRedis(tmp_path).start()
    finally:
        rd.stop()
    assert wait_gone([pid]) == []
    assert not (tmp_path / "redis" / "redis.pid").exists()
    # restarts on the remembered port, empty (no persistence by design)
    again = EmbeddedRedis(tmp_path)
    url2 = again.start()
    try:
        assert url2 == url
        assert redis_cmd(url2, "GET", "k") is None
    finally:
        again.stop()


def test_s3_bucket_and_objects() -> None:
    import boto3

    s3 = EmbeddedS3()
    endpoint = s3.start()
    try:
        s3.create_bucket("media")
        s3.create_bucket("media")  # idempotent
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=s3.secret_access_key,
            region_name="us-east-1",
        )
        client.put_object(Bucket="media", Key="a.txt", Body=b"hello")
        assert client.get_object(Bucket="media", Key="a.txt")["Body"].read() == b"hello"
        client.close()
    finally:
        s3.stop()
    import httpx

    with pytest.raises(httpx.TransportError):
        httpx.get(endpoint, timeout=2)


CHILD = textwrap.dedent(
    """
    import os, sys, psycopg
    from edgefn.embedded import EmbeddedPostgres, EmbeddedRedis
    data = sys.argv[1]
    pg, rd = EmbeddedPostgres(data), EmbeddedRedis(data)
    dsn, url = pg.start(), rd.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table if not exists kept (v int)")
        conn.execute("insert into kept values (1)")
    print(os.geteuid(), pg.proc.pid, rd.proc.pid, flush=True)
    if sys.argv[2] == "hang":
        import time
        time.sleep(120)
    pg.stop(); rd.stop()
    pg2 = EmbeddedPostgres(data)
    with psycopg.connect(pg2.start()) as conn:
        n = conn.execute("select count(*) from kept").fetchone()[0]
    pg2.stop()
    print("rows", n, flush=True)
    """
)


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL gives the parent no chance to clean up: PR_SET_PDEATHSIG must."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), "hang"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, "the child did not start its services"
        _, pg_pid, redis_pid = (int(x) for x in line.split())
        assert alive(pg_pid) and alive(redis_pid)
    finally:
        proc.kill()
        proc.wait()
    assert wait_gone([pg_pid, redis_pid]) == []


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="as a normal user every test here already takes the non-root path",
)
def test_non_root_user() -> None:
    """Run the services as a normal user (uid 1000 inside a user namespace, so the checkout
    and its virtualenv stay readable whatever their permissions): postgres runs directly,
    with no namespace of its own; as root (every other test here) it runs in one."""
    data = tempfile.mkdtemp(prefix="edgefn-nonroot-")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL", "REDIS_URL"))}
        env["HOME"] = data
        result = subprocess.run(
            ["unshare", "--user", "--map-user=1000", "--map-group=1000", sys.executable, "-c", CHILD, data, "once"],
            cwd=REPO, capture_output=True, text=True, timeout=90, env=env,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        first, second = result.stdout.splitlines()[:2]
        euid, pg_pid, redis_pid = (int(x) for x in first.split())
        assert euid == 1000
        assert second == "rows 1"
        assert wait_gone([pg_pid, redis_pid]) == []
        # created by the namespaced user, i.e. by us outside: nothing else owns anything
        assert Path(data, "pg").stat().st_uid == os.geteuid()
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs a user namespace")
def test_root_uses_a_user_namespace_and_changes_nothing_outside(tmp_path: Path) -> None:
    parent = tmp_path.stat()
    pg = EmbeddedPostgres(tmp_path / "data")
    pg.start()
    try:
        assert pg.proc is not None
        cmdline = Path(f"/proc/{pg.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].endswith(b"/postgres")
        # inside its namespace postgres is not root; outside, its files stay root's
        uid_map = Path(f"/proc/{pg.proc.pid}/uid_map").read_text().split()
        assert uid_map[0] != "0" and uid_map[1] == "0"
    finally:
        pg.stop()
    assert (tmp_path / "data" / "pg").stat().st_uid == 0
    after = tmp_path.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (parent.st_uid, parent.st_gid, parent.st_mode)
