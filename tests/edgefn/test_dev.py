"""`edgefn dev` as a user runs it: a subprocess with a clean environment (embedded
services), the printed curl commands run exactly as printed, Ctrl-C leaves no process
behind; and the start-up errors are one line with a non-zero exit."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from functions import FUNCTIONS
from tests.devserver import REPO, DevServer, clean_env, edgefn_cmd, free_port, start_dev

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="`edgefn dev` is tested on Linux")

#: without migrations the roles the deep health check uses (service_role) do not exist
MIGRATIONS = importlib.util.find_spec("edgefn.migrate") is not None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with start_dev(tmp_path_factory.mktemp("dev")) as server:
        yield server


def test_the_first_deep_health_after_start_is_up(dev: DevServer) -> None:
    """Runs first: slow clients (boto3's, TLS contexts) are built at start-up, off the event
    loop, so the first deep check meets Redis's 50 ms deadline (it answered 503 when
    upload-media built its S3 client on the loop during the check)."""
    service = next(ln for ln in dev.lines if ln.startswith("SERVICE_TOKEN=")).removeprefix("SERVICE_TOKEN=")
    with httpx.Client(base_url=dev.base, timeout=10, headers={"Authorization": f"Bearer {service}"}) as client:
        for name in FUNCTIONS:
            r = client.get(f"/functions/v1/{name}/health", params={"deep": "1"})
            assert r.status_code == 200, (name, r.text)
            assert {s["status"] for s in r.json()["data"]["services"].values()} == {"up"}, (name, r.text)


def test_every_function_answers_health(dev: DevServer) -> None:
    with httpx.Client(base_url=dev.base, timeout=10) as client:
        for name in FUNCTIONS:
            deadline = time.monotonic() + 10
            while True:
                r = client.get(f"/functions/v1/{name}/health")
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert r.status_code == 200, (name, r.text)
            assert r.json()["data"]["function"] == name


def test_local_routes(dev: DevServer) -> None:
    with httpx.Client(base_url=dev.base, timeout=10) as client:
        jwks = client.get("/auth/v1/.well-known/jwks.json")
        assert jwks.status_code == 200
        [key] = jwks.json()["keys"]
        assert key["alg"] == "ES256" and "d" not in key
        missing = client.get("/nowhere")
        assert missing.status_code == 404
        assert missing.json()["success"] is False
        assert missing.json()["error"]["code"] == "ROUTE_NOT_FOUND"
        unknown_fn = client.get("/functions/v1/no-such-function/health")
        assert unknown_fn.status_code == 404


def test_banner_names_the_demo_user_and_a_token(dev: DevServer) -> None:
    import jwt

    text = "\n".join(dev.lines)
    assert dev.base in text
    assert "00000000-0000-4000-8000-000000000001" in text
    [token_line] = [ln for ln in dev.lines if ln.startswith("TOKEN=")]
    claims = jwt.decode(token_line.removeprefix("TOKEN="), options={"verify_signature": False})
    assert claims["sub"] == "00000000-0000-4000-8000-000000000001"
    assert claims["app_metadata"]["tier"] == "paid"
    assert 23 * 3600 < claims["exp"] - claims["iat"] <= 24 * 3600


def test_the_banner_points_at_the_api_docs(dev: DevServer) -> None:
    [line] = [ln for ln in dev.lines if ln.strip().startswith("docs ")]
    url = line.split()[1]
    assert url == f"{dev.base}/docs" and "TOKEN" in line
    with httpx.Client(timeout=10) as client:
        page = client.get(url)
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
        doc = client.get(f"{dev.base}/openapi.json").json()
    assert doc["servers"][0]["url"] == dev.base
    assert {f"/functions/v1/{name}/health" for name in FUNCTIONS} <= set(doc["paths"])


def test_printed_curl_commands_work_as_printed(dev: DevServer) -> None:
    token_line = "\n".join(ln for ln in dev.lines if ln.startswith(("TOKEN=", "SERVICE_TOKEN=")))
    commands = [ln for ln in dev.lines if ln.startswith("curl ")]
    assert len(commands) >= 3
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", f"{token_line}\n{command}"], capture_output=True, text=True, timeout=20
        )
        assert result.returncode == 0, (command, result.stderr)
        body = json.loads(result.stdout)
        if "keys" in body:
            assert body["keys"], command
        else:
            assert body["success"] is True, (command, body)
            data = body["data"]
            if isinstance(data, dict) and "status" in data and (MIGRATIONS or "deep=1" not in command):
                assert data["status"] == "ok", (command, body)
    assert any("deep=1" in c for c in commands)
    assert all(shlex.split(c)[0] == "curl" for c in commands)


def test_an_upload_returns_a_url_that_loads(dev: DevServer) -> None:
    """The embedded S3 stand-in gets a public URL, as a configured R2 must (R2_PUBLIC_URL)."""
    token = next(ln for ln in dev.lines if ln.startswith("TOKEN=")).removeprefix("TOKEN=")
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200)
    with httpx.Client(base_url=dev.base, timeout=20) as client:
        r = client.post("/functions/v1/upload-media", headers={"authorization": f"Bearer {token}"},
                        data={"bucket": "avatars"}, files={"file": ("me.png", png, "image/png")})
        assert r.status_code == 201, r.text
        got = httpx.get(r.json()["data"]["url"], timeout=10)  # no credentials, as a browser loads it
    assert got.status_code == 200 and got.content == png


def test_seed_finds_the_running_servers_database_by_data_dir(dev: DevServer) -> None:
    """`edgefn seed --data-dir` as `edgefn token --data-dir`: no DSN copied from the banner."""
    from edgefn.seed import DEMO_USERS

    result = subprocess.run(edgefn_cmd("seed", "--data-dir", str(dev.data_dir), "--users", str(DEMO_USERS)),
                            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"already seeded with {DEMO_USERS:,} users" in result.stdout
    other = subprocess.run(edgefn_cmd("seed", "--data-dir", str(dev.data_dir), "--users", "3"),
                           cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and "pass --reset" in other.stderr


def test_webhook_secrets_are_printed_recorded_and_checked_and_demo_plans_registered(dev: DevServer) -> None:
    import hashlib
    import hmac

    printed = dict(ln.split("=", 1) for ln in dev.lines if ln.startswith(("PAYSTACK_SECRET_KEY=", "REVENUECAT_WEBHOOK_AUTH=")))
    secrets = {k: shlex.split(v)[0] for k, v in printed.items()}  # as a shell reads the printed line
    assert secrets["PAYSTACK_SECRET_KEY"].startswith("sk_test_") and secrets["REVENUECAT_WEBHOOK_AUTH"].startswith("Bearer ")
    assert json.loads((dev.data_dir / "dev.json").read_text())["webhooks"] == secrets
    body = json.dumps({"event": "customeridentification.success", "data": {"email": "a@example.com"}}).encode()
    url = f"{dev.base}/functions/v1/webhooks"
    with httpx.Client(timeout=10) as client:
        good = hmac.new(secrets["PAYSTACK_SECRET_KEY"].encode(), body, hashlib.sha512).hexdigest()
        assert client.post(f"{url}/paystack", content=body, headers={"x-paystack-signature": good}).status_code == 200
        assert client.post(f"{url}/paystack", content=body, headers={"x-paystack-signature": "0" * 128}).status_code == 401
        test_event = json.dumps({"api_version": "1.0", "event": {"type": "TEST", "id": "dev-test-1",
                                                                 "event_timestamp_ms": 1, "app_user_id": "x"}})
        r = client.post(f"{url}/revenuecat", content=test_event,
                        headers={"authorization": secrets["REVENUECAT_WEBHOOK_AUTH"]})
        assert r.status_code == 200, r.text
    listed = subprocess.run(edgefn_cmd("plans", "list", "--data-dir", str(dev.data_dir)),
                            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "pro_monthly  paystack  PLN_demo_pro_monthly  200000 NGN  monthly  paid" in listed.stdout


def test_seed_without_a_database_or_a_running_server_says_so(tmp_path: Path) -> None:
    result = subprocess.run(edgefn_cmd("seed", "--data-dir", str(tmp_path)),
                            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"edgefn seed: no database: DATABASE_URL is not set and no `edgefn dev` is running with --data-dir {tmp_path} "
        "(start it, or pass --database-url)"
    ]


def test_sigint_stops_the_server_and_everything_it_started(dev: DevServer) -> None:
    """Runs last in this module: it stops the shared server."""
    children = descendants(dev.proc.pid)
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in children if alive(p)}
    assert any(n.startswith("postgres") for n in names), names
    assert any(n.startswith("redis-server") for n in names), names
    dev.proc.send_signal(signal.SIGINT)
    assert dev.proc.wait(20) == 0, dev.stderr()[-3000:]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in children if alive(p)] == []
    assert not (dev.data_dir / "pg" / "postmaster.pid").exists()
    assert not (dev.data_dir / "redis" / "redis.pid").exists()
    assert not (dev.data_dir / "dev.json").exists()
    leftover = subprocess.run(["pgrep", "-f", str(dev.data_dir)], capture_output=True, text=True).stdout.split()
    assert leftover == []
    assert "Traceback" not in dev.stderr()


# -- start-up errors: one line, non-zero exit, nothing started -------------------------------


def run_dev(tmp_path: Path, port: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        edgefn_cmd("dev", "--port", str(port), "--data-dir", str(tmp_path / "data")),
        cwd=REPO, env=clean_env(**env), capture_output=True, text=True, timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgefn dev: ")
    for word in words:
        assert word in lines[0], lines[0]


def test_busy_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_dev(tmp_path, port)
    assert_one_line_error(result, str(port), "in use")
    assert not (tmp_path / "data" / "pg").exists()  # checked before starting anything


def test_malformed_database_url_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_dev(tmp_path, free_port(), DATABASE_URL="nonsense")
    assert_one_line_error(result, "DATABASE_URL")
    assert not (tmp_path / "data" / "redis").exists()


def test_unreachable_database_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_dev(tmp_path, free_port(), DATABASE_URL="postgresql://postgres@127.0.0.1:1/postgres")
    assert_one_line_error(result, "DATABASE_URL", "127.0.0.1:1")
    assert not (tmp_path / "data" / "redis").exists()


def test_r2_without_a_public_url_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_dev(tmp_path, free_port(), R2_ACCOUNT_ID="acct", R2_BUCKET="media")
    assert_one_line_error(result, "R2_PUBLIC_URL", "custom domain")
    assert not (tmp_path / "data" / "pg").exists()  # checked before starting anything


def test_sigterm_while_starting_leaves_nothing(tmp_path: Path) -> None:
    with open(tmp_path / "stderr.log", "w") as err:
        proc = subprocess.Popen(
            edgefn_cmd("dev", "--port", str(free_port()), "--data-dir", str(tmp_path / "data")),
            cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err,
        )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline and proc.poll() is None:
            for pid in descendants(proc.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() in ("initdb", "postgres"):
                        seen.add(pid)
            time.sleep(0.01)
        assert seen, "no initdb/postgres child appeared"
        seen.update(descendants(proc.pid))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in seen if alive(p)] == []
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()
    assert not (tmp_path / "data" / "pg.initdb-tmp").exists()
