"""A function as Lambda runs it, in a fresh process: the handler module's import is the init
phase (settings, Sentry with its Lambda integration, connections to Postgres and Redis on
the loop every invocation then uses); each invocation writes one EMF line on stdout (the
shape CloudWatch requires, checked against the EMF specification's schema), one JSON log
line with cold_start, the version and both request ids, and flushes Sentry before it
returns. Plus the EMF writer's own rules, in process."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shared.emf import EMF, MAX_VALUES
from shared.observability import metrics
from tests.shared.test_observability import Recorder

REPO = Path(__file__).resolve().parents[2]

#: the CloudWatch Embedded Metric Format specification's structure
EMF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_aws"],
    "properties": {"_aws": {
        "type": "object",
        "required": ["Timestamp", "CloudWatchMetrics"],
        "properties": {
            "Timestamp": {"type": "integer", "minimum": 0},
            "CloudWatchMetrics": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["Namespace", "Dimensions", "Metrics"],
                "properties": {
                    "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "Dimensions": {"type": "array", "items": {
                        "type": "array", "maxItems": 30, "items": {"type": "string", "minLength": 1, "maxLength": 250}}},
                    "Metrics": {"type": "array", "maxItems": 100, "items": {
                        "type": "object", "required": ["Name"],
                        "properties": {
                            "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "Unit": {"enum": ["Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes",
                                              "Megabytes", "Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits",
                                              "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
                                              "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second",
                                              "Terabytes/Second", "Bits/Second", "Kilobits/Second",
                                              "Megabits/Second", "Gigabits/Second", "Terabits/Second",
                                              "Count/Second", "None"]},
                            "StorageResolution": {"enum": [1, 60]},
                        }}},
                }}},
        }}},
}


def check_emf(doc: dict[str, Any]) -> dict[str, Any]:
    """The schema, plus the rules it cannot say: every dimension and metric named is a
    member of the document, dimension values are strings, metric values are numbers or
    arrays of at most 100 numbers. Returns each metric's values (a list) by name."""
    jsonschema.validate(doc, EMF_SCHEMA)
    out = {}
    for directive in doc["_aws"]["CloudWatchMetrics"]:
        for dims in directive["Dimensions"]:
            for d in dims:
                assert isinstance(doc[d], str), d
        for m in directive["Metrics"]:
            value = doc[m["Name"]]
            values = value if isinstance(value, list) else [value]
            assert 1 <= len(values) <= 100 and all(isinstance(v, (int, float)) for v in values), m["Name"]
            out[m["Name"]] = values
    return out


CHILD = r"""
import json, sys, time
from types import SimpleNamespace
t = time.perf_counter()
import functions.batch_swipe.handler as h          # Lambda's init phase
init_ms = (time.perf_counter() - t) * 1000
event = json.loads(sys.argv[1])
results = []
for n in (1, 2):
    ctx = SimpleNamespace(aws_request_id=f"invocation-{n}", function_name="edgefn-test-batch-swipe",
                          get_remaining_time_in_millis=lambda: 10000)
    r = h.handler(event, ctx)
    results.append({"status": r["statusCode"], "body": json.loads(r["body"]), "request_id": r["headers"]["x-request-id"]})
#: what init and two requests must not have imported (the cold start would pay for them).
#: Not `botocore` itself: Powertools imports the package (its __init__ only, well under a
#: millisecond; Lambda's runtime provides it) to register a user-agent hook
heavy = sorted(m for m in ("httpx", "httpcore", "boto3", "botocore.session", "sentry_sdk") if m in sys.modules)
sys.stdout.write("RESULT " + json.dumps({"results": results, "init_ms": init_ms, "heavy": heavy}) + "\n")
"""


def lambda_env(base_env: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_FUNCTION_NAME": "edgefn-test-batch-swipe",
        "AWS_LAMBDA_FUNCTION_VERSION": "7",
        "EDGEFN_STAGE": "test",
        "EDGEFN_METRICS": "emf",
        "EDGEFN_ACCESS_LOG": "1",
        "DATABASE_URL": base_env["database_url"],
        "REDIS_URL": base_env["redis_url"],
        "KEY_PREFIX": base_env["key_prefix"],
        "SUPABASE_JWKS_URL": base_env["supabase_jwks_url"],
        "JWT_ISSUER": base_env["jwt_issuer"],
        **extra,
    }


def health_event() -> dict[str, Any]:
    from tests.conftest import load_event

    event = load_event("function_url_get_health.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/functions/v1/batch-swipe/health"
    return event


def test_init_connects_and_each_invocation_logs_and_emits_metrics(base_env: dict[str, Any]) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(health_event())], cwd=REPO,
                         env=lambda_env(base_env), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    result = json.loads(next(ln for ln in lines if ln.startswith("RESULT "))[7:])
    assert [r["status"] for r in result["results"]] == [200, 200]
    logs = [json.loads(ln) for ln in out.stderr.splitlines() if ln.startswith("{")]
    assert result["heavy"] == []

    # init: both of the function's services connected before any request
    init = [e for e in logs if e["msg"] == "init"]
    assert len(init) == 1 and init[0]["services"] == {"database": "up", "redis": "up", "auth": "up"}
    assert logs.index(init[0]) < min(i for i, e in enumerate(logs) if e["msg"] == "request")

    requests = [e for e in logs if e["msg"] == "request"]
    assert [e["cold_start"] for e in requests] == [True, False]
    assert [e["lambda_request_id"] for e in requests] == ["invocation-1", "invocation-2"]
    assert [e["request_id"] for e in requests] == [r["request_id"] for r in result["results"]]
    assert {e["version"] for e in requests} == {"7"}

    # one EMF document per invocation, written before the handler returned
    docs = [json.loads(ln) for ln in lines if ln.startswith("{")]
    assert len(docs) == 2
    values = [check_emf(d) for d in docs]
    for doc, v in zip(docs, values):
        directive = doc["_aws"]["CloudWatchMetrics"][0]
        assert directive["Namespace"] == "edgefn"
        assert directive["Dimensions"] == [["service", "function"], ["service"]]
        assert (doc["service"], doc["function"]) == ("edgefn-test", "batch-swipe")
        assert v["Requests"] == [1] and v["Status2xx"] == [1]
        assert len(v["Latency"]) == 1 and v["Latency"][0] > 0
        units = {m["Name"]: m.get("Unit") for m in directive["Metrics"]}
        assert units["Latency"] == "Milliseconds" and units["Requests"] == "Count"
    assert values[0]["ColdStart"] == [1] and "ColdStart" not in values[1]


SENTRY_CHILD = r"""
import json, sys
from types import SimpleNamespace
from shared.app import FunctionApp
from shared.settings import CoreSettings

fn = FunctionApp("obs", settings=CoreSettings)

@fn.get("/boom", auth="public")
async def boom(ctx):
    raise RuntimeError("kaboom-lambda")

handler = fn.lambda_handler                       # init: Sentry with the Lambda integration
import sentry_sdk
integrations = sorted(sentry_sdk.get_client().integrations)
from tests.conftest import load_event
event = load_event("function_url_get_health.json")
event["rawPath"] = event["requestContext"]["http"]["path"] = "/boom"
r = handler(event, SimpleNamespace(aws_request_id="inv-9", function_name="f", get_remaining_time_in_millis=lambda: 9000))
# nothing flushes after this line: the recorder must already hold the event
sys.stdout.write("RESULT " + json.dumps({"status": r["statusCode"], "integrations": integrations}) + "\n")
sys.stdout.flush()
import os
os._exit(0)
"""


def test_sentry_ships_the_lambda_integration_and_flushes_before_returning(base_env: dict[str, Any]) -> None:
    recorder = Recorder()
    try:
        env = lambda_env(base_env, SENTRY_DSN=f"http://publickey@127.0.0.1:{recorder.port}/1")
        out = subprocess.run([sys.executable, "-c", SENTRY_CHILD], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[7:])
        assert result["status"] == 500
        assert "aws_lambda" in result["integrations"]
        assert any(b"kaboom-lambda" in body for body in recorder.bodies)
    finally:
        recorder.server.shutdown()


# -- the EMF writer ------------------------------------------------------------------------------


@pytest.fixture
def fresh_metrics() -> Any:
    metrics.clear()
    yield metrics
    metrics.clear()


def test_emf_counts_statuses_counters_and_chunks_latencies(fresh_metrics: Any) -> None:
    stream = io.StringIO()
    emf = EMF("webhooks", stream=stream, enabled=True)
    for i in range(MAX_VALUES + 5):
        metrics.observe(200 if i % 10 else 503, float(i))
    metrics.incr("ratelimit.limited", 3)
    metrics.incr("webhooks.paystack.applied")
    emf.flush({"webhooks.pending": 12, "outbox.oldest_age_s": 4.5})
    docs = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    assert len(docs) == 2  # 104 latencies: 99, then 5
    first, second = (check_emf(d) for d in docs)
    assert first["Requests"] == [MAX_VALUES + 5] and first["Status5xx"] == [11] and first["Status2xx"] == [93]
    assert first["ratelimit.limited"] == [3] and first["webhooks.paystack.applied"] == [1]
    assert first["ColdStart"] == [1] and first["webhooks.pending"] == [12]
    assert len(first["Latency"]) == MAX_VALUES and len(second["Latency"]) == 5
    assert set(second) == {"Latency"}
    units = {m["Name"]: m["Unit"] for d in docs for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["outbox.oldest_age_s"] == "Seconds" and units["webhooks.pending"] == "Count"
    # taken: the next flush has only what happened since
    stream.truncate(0)
    stream.seek(0)
    emf.flush()
    assert stream.getvalue() == ""
    metrics.observe(200, 1.0)
    emf.flush()
    (doc,) = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    assert "ColdStart" not in check_emf(doc)


def test_emf_is_off_unless_asked_and_ticks_by_interval(fresh_metrics: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.emf
    from shared.settings import CoreSettings

    stream = io.StringIO()
    emf = EMF("f", stream=stream)
    metrics.observe(200, 1.0)
    emf.flush()
    assert stream.getvalue() == "" and not emf.enabled
    emf.configure(CoreSettings.load(env={"EDGEFN_METRICS": "emf", "EDGEFN_STAGE": "prod"}))
    emf.tick()
    assert stream.getvalue() == ""  # the interval has not passed
    monkeypatch.setattr(shared.emf, "FLUSH_INTERVAL_S", 0.0)
    emf.tick()
    doc = json.loads(stream.getvalue())
    assert check_emf(doc)["Requests"] == [1] and doc["service"] == "edgefn-prod"


# -- the first request after init: the cold deadline ------------------------------------------------


def swipe_event(token: str, target: str) -> dict[str, Any]:
    event = health_event()
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/functions/v1/batch-swipe"
    event["requestContext"]["http"]["method"] = "POST"
    event["headers"] = {**event["headers"], "authorization": f"Bearer {token}", "content-type": "application/json"}
    event["body"] = json.dumps({"swipes": [{"target_id": target, "action": "pass"}]})
    event["isBase64Encoded"] = False
    return event


def _cold_start(env: dict[str, str], event: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(event)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    logs = [json.loads(ln) for ln in out.stderr.splitlines() if ln.startswith("{")]
    return result, logs


async def test_the_first_request_after_init_gets_the_cold_redis_deadline_later_ones_the_warm(
    base_env: dict[str, Any], bridge: Any, database_url: str, make_token: Any
) -> None:
    """batch-swipe fails closed when Redis is slow. Through the Upstash REST bridge with
    every reply 150 ms late (three times REDIS_TIMEOUT_MS): init connects (its own deadline);
    the first request, whose calls also carry a fresh process's one-time costs, gets the cold
    deadline and is served; the second is warm and REDIS_TIMEOUT_MS governs it again (503).
    With no cold deadline (REDIS_COLD_TIMEOUT_MS=0) the first request is refused too."""
    from tests import factories as f

    me, other = await f.create_user(database_url), await f.create_user(database_url)
    event = await asyncio.to_thread(swipe_event, make_token(me), other)
    env = lambda_env(base_env, UPSTASH_REDIS_REST_URL=bridge.base_url, UPSTASH_REDIS_REST_TOKEN=bridge.token,
                     REDIS_TIMEOUT_MS="50", EDGEFN_METRICS="off")
    del env["REDIS_URL"]
    bridge.delay_seconds = 0.15
    try:
        result, logs = await asyncio.to_thread(_cold_start, env, event)
        (init,) = [e for e in logs if e["msg"] == "init"]
        assert init["services"]["redis"] == "up"
        assert result["heavy"] == []  # Upstash and the keys over shared.http1, not httpx
        first, second = result["results"]
        assert first["status"] == 200, first["body"]
        assert second["status"] == 503 and second["body"]["error"]["code"] == "RATE_LIMITER_UNAVAILABLE"

        result, _ = await asyncio.to_thread(_cold_start, {**env, "REDIS_COLD_TIMEOUT_MS": "0"}, event)
        assert [r["status"] for r in result["results"]] == [503, 503]
    finally:
        bridge.delay_seconds = 0.0


async def test_init_reports_a_silent_redis_opens_the_rest_and_then_gives_no_cold_deadline(
    base_env: dict[str, Any], silent_server: Any, make_token: Any
) -> None:
    """Redis accepts connections and never answers. Init still opens Postgres and fetches
    the keys, reports Redis down; since init never reached Redis, the first request has no
    cold deadline: a fail-closed route answers 503 under REDIS_TIMEOUT_MS."""
    import httpx

    from shared.app import FunctionApp
    from shared.health import add_health_route
    from shared.services import Services
    from shared.settings import CoreSettings

    fn = FunctionApp("init-probe", settings=CoreSettings)
    add_health_route(fn, ("database", "redis"))

    @fn.get("/me", auth="required", redis_failure="closed")
    async def me(ctx: Any) -> Any:
        return {"user": ctx.principal.user_id}

    settings = CoreSettings.load(env={}, **{**base_env, "redis_url": f"redis://127.0.0.1:{silent_server.port}/0",
                                            "redis_timeout_ms": 50})
    services = Services(settings)
    fn.configure(settings=settings, services=services)
    fn.WARM_TIMEOUT_S = 0.5
    try:
        opened = await fn.warm()
        assert opened["database"] == "up" and opened["auth"] == "up"
        assert opened["redis"].startswith("down: ")
        assert services.kv.cold_timeout is None
        token = await asyncio.to_thread(make_token)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://t") as client:
            r = await client.get("/me", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "RATE_LIMITER_UNAVAILABLE"
    finally:
        await services.aclose()
