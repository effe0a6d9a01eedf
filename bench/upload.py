"""upload-media benchmark: memory while streaming, and latency of the inline and presigned paths.

    python -m bench.upload [--rounds 3] [--inline-requests 100] [--presign-requests 300] [--json]

Each figure is compared, in the same run, with a baseline written the way the seed app did
it (`baseline` below): the inline baseline buffers the body (`await request.body()`, then
`request.form()`), trusts the declared type and writes no row; the presign baseline signs
the host only and charges no quota. Both go through the same middleware (auth, rate limit).

1. Memory. Each measurement is a fresh process that warms the app up (one small upload),
   then streams one request through the ASGI app in process (the body is generated chunk by
   chunk, so the client side holds none of it) and reports the growth of its peak RSS over
   the RSS before the request (Linux `VmHWM`, reset through /proc/self/clear_refs) and, in a
   second process, tracemalloc's peak. Two files: one byte over the inline cap (refused with
   413), and exactly at the cap (stored: spooled, PUT to moto's S3 server, row written).
2. Latency. uvicorn (one worker) serves the function and the baseline; one client sends
   requests one after another: a 1 MiB PNG inline (R2 calls go to moto's S3 server on this
   machine) and presign calls (no network to R2: signing is local). Rounds interleave
   subject and baseline; the median round's p50/p95 is shown.
3. Round trips per request (Redis, Postgres, R2), counted in process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from functions.upload_media.settings import MiB, UploadMediaSettings
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.health import add_health_route

ISSUER = "http://127.0.0.1/auth/v1"
BOUNDARY = "benchBoundary9f8e7d6c5b4a"
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x04\x00\x00\x00\x04\x00\x08\x06\x00\x00\x00"
BLOCK = os.urandom(64 * 1024)

# -- the baseline: the seed's approach, behind the same middleware ----------------------------

baseline = FunctionApp("upload-media", settings=UploadMediaSettings, description="seed-style upload (benchmark baseline)")
add_health_route(baseline, ())


@baseline.post("/", auth="required", raw_body=True)
async def baseline_upload(ctx: RequestContext) -> Any:
    from shared import errors

    s: Any = ctx.settings
    await ctx.request.body()  # the whole body first ...
    form = await ctx.request.form()
    file: Any = form["file"]
    data = await file.read()
    if len(data) > s.upload_inline_max_bytes:  # ... then the size check
        raise errors.PayloadTooLarge("file too large", code="FILE_TOO_LARGE")
    key = f"{form['bucket']}/{ctx.user_id}/{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.png"
    client = ctx.services.storage.client
    await asyncio.to_thread(
        client.put_object, Bucket=ctx.services.storage.bucket, Key=key, Body=data, ContentType=file.content_type,
        CacheControl="public, max-age=31536000",
    )  # fmt: skip
    return {"url": ctx.services.storage.public_url(key), "fileName": key}


@baseline.post("/presign", auth="required", raw_body=True)
async def baseline_presign(ctx: RequestContext) -> Any:
    body = json.loads(await ctx.request.body())
    key = f"{body['bucket']}/{ctx.user_id}/{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.mp4"
    storage = ctx.services.storage
    url = storage.client.generate_presigned_url(
        "put_object", Params={"Bucket": storage.bucket, "Key": key}, ExpiresIn=300, HttpMethod="PUT"
    )
    return {"uploadUrl": url, "publicUrl": storage.public_url(key), "fileKey": key}


# -- request bodies ------------------------------------------------------------------------------


def _framing(bucket: str) -> tuple[bytes, bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="bucket"\r\n\r\n{bucket}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="photo.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def png_form(size: int, bucket: str = "posts") -> bytes:
    head, tail = _framing(bucket)
    data = (PNG_HEAD + BLOCK * (size // len(BLOCK) + 1))[:size]
    return head + data + tail


async def streamed_png_form(size: int, bucket: str = "posts") -> AsyncIterator[bytes]:
    """The same body, generated 64 KiB at a time (never held whole by the sender)."""
    head, tail = _framing(bucket)
    yield head + PNG_HEAD
    left = size - len(PNG_HEAD)
    while left > 0:
        n = min(left, len(BLOCK))
        yield BLOCK[:n]
        left -= n
    yield tail


CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# -- 1. memory, in a fresh process per measurement -----------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


async def _child_memory(app_name: str, size: int, use_tracemalloc: bool, token: str) -> dict[str, Any]:
    import gc

    import httpx

    fn = baseline if app_name == "baseline" else __import__("functions.upload_media.handler", fromlist=["fn"]).fn
    headers = {"Authorization": f"Bearer {token}", "Content-Type": CONTENT_TYPE}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://bench") as client:
        warm = await client.post("/functions/v1/upload-media", content=png_form(1000), headers=headers)
        assert warm.status_code in (200, 201), warm.text
        gc.collect()
        rss_before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
        if use_tracemalloc:
            import tracemalloc

            tracemalloc.start()
        r = await client.post("/functions/v1/upload-media", content=streamed_png_form(size), headers=headers)
        peak_tm = 0
        if use_tracemalloc:
            import tracemalloc

            peak_tm = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        hwm = _status_kib("VmHWM")
    body = r.json()
    return {
        "status": r.status_code,
        "code": body.get("error", {}).get("code") if not body.get("success") else None,
        "peak_rss_growth_bytes": (hwm - rss_before) * 1024,
        "tracemalloc_peak_bytes": peak_tm,
    }


def run_memory(env: dict[str, str], tokens: list[str], rounds: int) -> dict[str, Any]:
    cap = int(env.get("UPLOAD_INLINE_MAX_BYTES", 4 * MiB))
    cases = [("over cap (413)", cap + 1), ("at cap (stored)", cap)]
    out: dict[str, Any] = {}
    for label, size in cases:
        for app in ("subject", "baseline"):
            rss, tm, statuses = [], [], set()
            for i in range(rounds):
                for use_tm in (False, True):
                    token = tokens[i % len(tokens)]
                    argv = [sys.executable, "-m", "bench.upload", "--child-memory", app, str(size), "1" if use_tm else "0", token]
                    res = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, cwd=_root())
                    if res.returncode != 0:
                        raise RuntimeError(res.stderr[-2000:])
                    m = json.loads(res.stdout.strip().splitlines()[-1])
                    statuses.add((m["status"], m["code"]))
                    (tm if use_tm else rss).append(m["tracemalloc_peak_bytes"] if use_tm else m["peak_rss_growth_bytes"])
            out[f"{label}, {app}"] = {
                "file_bytes": size,
                "status": sorted(statuses, key=str),
                "peak_rss_growth_mib": round(statistics.median(rss) / MiB, 2),
                "tracemalloc_peak_mib": round(statistics.median(tm) / MiB, 2),
                "rounds_rss_mib": [round(x / MiB, 2) for x in rss],
            }
    return out


def _root() -> str:
    from bench import harness

    return str(harness.ROOT)


# -- 2. latency over HTTP ------------------------------------------------------------------------


def _pct(data: list[float], p: float) -> float:
    s = sorted(data)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


async def _series(port: int, path: str, n: int, tokens: list[str], body: bytes, content_type: str) -> list[float]:
    import httpx

    lat: list[float] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        for i in range(n):
            h = {"Authorization": f"Bearer {tokens[i % len(tokens)]}", "Content-Type": content_type}
            t0 = time.perf_counter()
            r = await c.post(path, content=body, headers=h)
            lat.append((time.perf_counter() - t0) * 1000)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    return lat


def _empty_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def run_latency(env: dict[str, str], tokens: list[str], rounds: int, n_inline: int, n_presign: int, s3: Any) -> dict[str, Any]:
    from bench import harness

    one_mib = png_form(1 * MiB)
    presign_body = json.dumps({"bucket": "videos", "content_type": "video/mp4", "content_length": 50 * MiB, "filename": "a.mp4"}).encode()
    ready = "/functions/v1/upload-media/health"
    with harness.server("functions.upload_media.handler:app", env, ready_path=ready) as sp, \
            harness.server("bench.upload:baseline", env, ready_path=ready) as bp:  # fmt: skip
        ports = {"subject": sp, "baseline": bp}
        scenarios = {
            "inline 1 MiB PNG": ("/functions/v1/upload-media", n_inline, one_mib, CONTENT_TYPE),
            "presign": ("/functions/v1/upload-media/presign", n_presign, presign_body, "application/json"),
        }
        for name, (path, _, body, ctype) in scenarios.items():  # warm-up, not counted
            for app, port in ports.items():
                asyncio.run(_series(port, path, 10, tokens, body, ctype))
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(rounds):
            for name, (path, n, body, ctype) in scenarios.items():
                for app, port in ports.items():
                    lat = asyncio.run(_series(port, path, n, tokens, body, ctype))
                    runs.setdefault(f"{name}, {app}", []).append(
                        {"p50_ms": round(_pct(lat, 50), 2), "p95_ms": round(_pct(lat, 95), 2), "n": n}
                    )
                    if path.endswith("media"):
                        _empty_bucket(s3, env["R2_BUCKET"])
    out = {}
    for name, rs in runs.items():
        median = sorted(rs, key=lambda r: r["p95_ms"])[len(rs) // 2]
        out[name] = {**median, "rounds_p95_ms": [r["p95_ms"] for r in rs]}
    return out


# -- 3. round trips, in process ------------------------------------------------------------------


async def run_round_trips(env: dict[str, str], tokens: list[str]) -> dict[str, Any]:
    import httpx

    from functions.upload_media.handler import fn
    from shared.services import Services

    out: dict[str, Any] = {}
    for app_name, app in (("subject", fn), ("baseline", baseline)):
        settings = UploadMediaSettings.load(env=env)
        services = Services(settings)
        app.configure(settings=settings, services=services)
        r2_sends = [0]
        services.storage.client.meta.events.register("before-send.s3", lambda **_: r2_sends.__setitem__(0, r2_sends[0] + 1))
        h = {"Authorization": f"Bearer {tokens[0]}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
            cases = {
                "inline 1 MiB PNG": lambda: c.post("/functions/v1/upload-media", content=png_form(MiB), headers={**h, "Content-Type": CONTENT_TYPE}),
                "presign": lambda: c.post("/functions/v1/upload-media/presign", headers=h,
                                          json={"bucket": "videos", "content_type": "video/mp4", "content_length": 50 * MiB}),
            }  # fmt: skip
            for name, call in cases.items():
                await call()  # warm: pools, scripts, the boto3 client
                kv0, r20 = services.kv.round_trips, r2_sends[0]
                db0 = services.db.round_trips if app_name == "subject" else 0
                r = await call()
                assert r.status_code in (200, 201), r.text
                out[f"{name}, {app_name}"] = {
                    "redis": services.kv.round_trips - kv0,
                    "postgres": (services.db.round_trips - db0) if app_name == "subject" else 0,
                    "r2": r2_sends[0] - r20,
                }
        await services.aclose()
    return out


# -- running it all ------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[tuple[str, Any]]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    )
    s3.create_bucket(Bucket=bucket)
    try:
        yield endpoint, s3
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-memory":
        app, size, use_tm, token = argv[1], int(argv[2]), argv[3] == "1", argv[4]
        print(json.dumps(asyncio.run(_child_memory(app, size, use_tm, token))))
        return 0
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inline-requests", type=int, default=100)
    p.add_argument("--presign-requests", type=int, default=300)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import logging

    import psycopg

    from bench import harness
    from edgefn.tokens import _new_private_jwk, mint, public_jwks

    from shared.observability import json_log

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    json_log.enabled = False  # the in-process round-trip count; the servers keep their log on
    key = _new_private_jwk()
    bucket = f"bench-media-{uuid.uuid4().hex[:8]}"
    with harness.services() as svc, moto_s3(bucket) as (endpoint, s3), \
            harness.scratch_database(svc.admin_dsn, f"edgefn_bench_upload_{uuid.uuid4().hex[:6]}") as dsn:  # fmt: skip
        users = [str(uuid.uuid4()) for _ in range(8)]
        with psycopg.connect(dsn, autocommit=True) as conn:
            for u in users:
                conn.execute("insert into auth.users (id, email) values (%s, %s)", (u, f"{u}@bench.test"))
        tokens = [mint(key, user_id=u, tier="free", issuer=ISSUER) for u in users]
        env = {
            "DATABASE_URL": dsn, "REDIS_URL": svc.redis_url, "KEY_PREFIX": "bench:" + uuid.uuid4().hex[:6],
            "JWT_ISSUER": ISSUER, "SUPABASE_JWKS": json.dumps(public_jwks(key)), "REDIS_TIMEOUT_MS": "1000",
            "R2_ENDPOINT_URL": endpoint, "R2_BUCKET": bucket, "R2_ACCESS_KEY_ID": "bench", "R2_SECRET_ACCESS_KEY": "bench",
            "R2_PUBLIC_URL": f"{endpoint}/{bucket}",
            "RATE_LIMIT_FREE": "1000000", "UPLOAD_HOURLY_FREE": "1000000", "UPLOAD_DAILY_MIB_FREE": "100000000",
        }  # fmt: skip
        report = {
            "machine": harness.machine(),
            "memory": run_memory(env, tokens, args.rounds),
            "round_trips": asyncio.run(run_round_trips(env, tokens)),
            "latency": run_latency(env, tokens, args.rounds, args.inline_requests, args.presign_requests, s3),
            "rounds": args.rounds,
        }
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def render(report: dict[str, Any]) -> str:
    lines = [f"upload-media benchmark: {report['machine']}", ""]
    lines.append("1. memory while streaming one request through the ASGI app (fresh process each, median of "
                 f"{report['rounds']}; inline cap = the 4 MiB default)")
    lines.append(f"{'case':<36}{'status':>14}{'peak RSS growth':>18}{'tracemalloc peak':>18}")
    mem = report["memory"]
    for name, m in mem.items():
        status = ",".join(f"{s}{' ' + c if c else ''}" for s, c in m["status"])
        lines.append(f"{name:<36}{status:>14}{m['peak_rss_growth_mib']:>15.2f} MiB{m['tracemalloc_peak_mib']:>15.2f} MiB")
    for case in ("over cap (413)", "at cap (stored)"):
        s, b = mem[f"{case}, subject"], mem[f"{case}, baseline"]
        cap_mib = s["file_bytes"] / MiB
        ratio = s["peak_rss_growth_mib"] / b["peak_rss_growth_mib"] if b["peak_rss_growth_mib"] else float("nan")
        lines.append(f"  {case}: subject/baseline peak RSS growth = {ratio:.2f}; subject under cap + 1 MiB "
                     f"({cap_mib + 1:.2f} MiB): {'yes' if s['peak_rss_growth_mib'] < cap_mib + 1 else 'NO'}")
    lines += ["", "2. latency, sequential requests to uvicorn (one worker); inline R2 calls go to moto's S3 server "
              "on this machine, presign makes no R2 call"]
    lines.append(f"{'scenario':<36}{'p50 ms':>9}{'p95 ms':>9}   rounds p95")
    lat = report["latency"]
    for name, m in lat.items():
        lines.append(f"{name:<36}{m['p50_ms']:>9.2f}{m['p95_ms']:>9.2f}   {'/'.join(f'{x:.1f}' for x in m['rounds_p95_ms'])}")
    for case in ("inline 1 MiB PNG", "presign"):
        s, b = lat[f"{case}, subject"], lat[f"{case}, baseline"]
        lines.append(f"  {case}: subject/baseline p95 = {s['p95_ms'] / b['p95_ms']:.2f}")
    lines += ["", "3. round trips per request (after warm-up)"]
    lines.append(f"{'scenario':<36}{'Redis':>7}{'Postgres':>10}{'R2':>5}")
    for name, m in report["round_trips"].items():
        lines.append(f"{name:<36}{m['redis']:>7}{m['postgres']:>10}{m['r2']:>5}")
    lines.append("  subject Redis calls: rate limit + hourly count + daily bytes (+ presign: the sweep note, sent "
                 "alongside the bytes check, so 3 in sequence)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
