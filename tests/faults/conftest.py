"""The fault suite's stack, load and report.

- `stack`: the suite's OWN embedded Postgres and Redis on fixed ports (stopped and started
  again by the tests on the same port, so the servers' pools must reconnect by themselves;
  the machine's services are never touched, whatever DATABASE_URL / REDIS_URL say), a
  migrated database, moto's S3, the push / Realtime stand-in, and the fleet (every function,
  `bench.apps.fleet_app`) in two uvicorn workers.
- `world`: users with profiles and purchases who drive the load, a Paystack plan, fresh
  users on demand (one per webhook delivery, so each delivery's effects are checkable).
- `Requests` builds each route's raw HTTP request; `Mix` draws them by weight; `Load` sends
  them open-loop in the background (latency from each request's scheduled start) and keeps
  every answer as a `Sample`; `Outage` marks when a service was down.
- `fault_report`: with `EDGEFN_FAULTS_REPORT=<file>`, one JSON line per test is appended:
  {"fault", "requests", "statuses", "max_ms", "outcome", "seconds", "routes"}.

`EDGEFN_FAULT_SECONDS` (default 20) is how long each outage lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.rows import dict_row

from bench import fleet as fleet_mod
from bench import harness
from bench.loadgen import Connection, build_request
from edgefn.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.factories import add_purchase, create_user
from tests.functions.upload_media import samples
from tests.functions.webhooks.conftest import TestPlan, charge, rc

#: how long each outage lasts (`edgefn bench --quick` sets 5)
FAULT_SECONDS = float(os.environ.get("EDGEFN_FAULT_SECONDS", "20"))
#: a request's deadline: the functions' timeout on the platform (serverless.yml, provider.timeout);
#: past it the platform cuts the invocation. No request may take longer, whatever is down.
DEADLINE_S = 10.0
#: how long the client waits before it records "no answer" (a hang past any deadline)
CLIENT_TIMEOUT_S = 30.0
#: how soon after a service is back every route must answer normally again
RECOVERY_S = 5.0
#: requests per second of the background load
RATE = 40.0
#: the paid tier's request limit per minute: the probe that shows rate limiting is back
PAID_LIMIT = 20

#: the fleet's environment beyond `Fleet.configure`'s defaults
FLEET_ENV = {
    "RATE_LIMIT_PAID": str(PAID_LIMIT),
    # the outbox's retry pace compressed to the test's time scale: the backoff is capped at
    # 2 s and a circuit breaker tries again after 2 s (production: 600 s and 30 s), so the
    # deliveries held during an outage go out within seconds of recovery; attempts are not
    # the subject here, so a 20 s outage must not exhaust them
    "RETRY_BASE_SECONDS": "0.5", "RETRY_MAX_SECONDS": "2", "BREAKER_RESET_SECONDS": "2",
    "MAX_ATTEMPTS": "100", "DRAIN_BUDGET_SECONDS": "5", "PUSH_DAILY_CAP": "100000",
    # the client, the fleet and every service share this machine's cores: the production
    # 50 ms Redis deadline trips on scheduling stalls alone, with nothing broken
    "REDIS_TIMEOUT_MS": "250",
}  # fmt: skip

F = "/functions/v1/"


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    redis_url: str
    dsn: str
    fleet: fleet_mod.Fleet
    base_url: str
    s3: fleet_mod.S3
    providers: fleet_mod.Providers
    #: the one thread that stops and starts the services during the tests: a service process
    #: gets a signal when the thread that started it ends (PR_SET_PDEATHSIG), so that thread
    #: lives until the services are stopped for good
    control: ThreadPoolExecutor

    @property
    def key_prefix(self) -> str:
        return self.fleet.env["KEY_PREFIX"]

    async def run(self, fn: Callable[[], object]) -> None:
        """`fn` (a service's stop or start) on the control thread, the load running meanwhile."""
        await asyncio.get_running_loop().run_in_executor(self.control, fn)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with contextlib.ExitStack() as es:
        control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faults-control")
        es.callback(control.shutdown)
        data = tmp_path_factory.mktemp("faults")
        pg = EmbeddedPostgres(data, port=harness.free_port())
        admin_dsn = pg.start()
        es.callback(pg.stop)
        redis = EmbeddedRedis(data, port=harness.free_port())
        redis_url = redis.start()
        es.callback(redis.stop)
        dsn = es.enter_context(harness.scratch_database(admin_dsn, "edgefn_faults"))
        s3 = es.enter_context(fleet_mod.s3())
        providers = es.enter_context(fleet_mod.providers())
        fleet = fleet_mod.Fleet.configure(dsn, redis_url, s3=s3, providers=providers)
        fleet.env.update(FLEET_ENV)
        base_url = es.enter_context(fleet.serve(workers=2))
        yield Stack(pg, redis, redis_url, dsn, fleet, base_url, s3, providers, control)


async def rows(dsn: str, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql, params)
        return await cur.fetchall() if cur.description else []


@dataclass
class World:
    dsn: str
    #: users with a profile and purchases; they send the background load
    users: list[str]
    plan: TestPlan

    async def new_users(self, n: int) -> list[str]:
        """`n` users with a profile (no purchases), in one connection."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            return [await create_user(conn, **_profile(i)) for i in range(n)]


def _profile(i: int) -> dict[str, Any]:
    """Half women looking for men, half men looking for women: every deck has candidates."""
    return {"gender": "man", "interested_in": ["woman"]} if i % 2 else {}


@pytest.fixture(scope="session")
async def world(stack: Stack) -> World:
    users: list[str] = []
    async with await psycopg.AsyncConnection.connect(stack.dsn, autocommit=True) as conn:
        for i in range(40):
            uid = await create_user(conn, **_profile(i))
            await add_purchase(conn, uid, "12.50", category="album")
            await add_purchase(conn, uid, "40.00", category="concert")
            users.append(uid)
    code, plan_code = f"faults_{uuid.uuid4().hex[:8]}", f"PLN_{uuid.uuid4().hex[:14]}"
    plan = TestPlan(code, plan_code, 200000, "NGN", "monthly")
    await rows(stack.dsn,
               "insert into public.subscription_plans (code, provider, tier, amount_minor, currency, interval, "
               "provider_plan_code) values (%s, 'paystack', 'paid', %s, %s, %s, %s)",
               (plan.code, plan.amount, plan.currency, plan.interval, plan.plan_code))  # fmt: skip
    world = World(stack.dsn, users, plan)
    await warm_up(stack, world)
    return world


async def warm_up(stack: Stack, world: World) -> None:
    """Every route a few times, several at once (so each worker takes some): the workers
    build their services and pools on first use, which is no fault's business."""
    r = Requests(stack, world)
    client = Load(stack.base_url)
    hook_users = iter(await world.new_users(24))
    failed: list[tuple[str, int | None, str]] = []
    for _ in range(3):  # the first round may trip over the cold start; the last must not
        calls = []
        for u in world.users[:8]:
            calls += [r.dashboard(u), r.deck(u), r.inbox(u), r.swipes(u, [(world.users[-1], "pass")]), r.presign(u),
                      r.upload(u), r.webhook(next(hook_users)), r.event([u]), r.drain()]
        answers = await asyncio.gather(*(client.send(c) for c in calls))
        failed = [(a.route, a.status, error_code(a)) for a in answers if a.status not in (200, 201, 202)]
    assert not failed, f"the fleet does not serve: {failed[:5]}"


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One request: the route it is counted under, its bytes, and what identifies its effects."""

    route: str
    raw: bytes
    key: str = ""


class Requests:
    """Raw HTTP/1.1 requests for each route, signed or authenticated as the fleet expects."""

    def __init__(self, stack: Stack, world: World) -> None:
        self.fleet = stack.fleet
        self.host = urlsplit(stack.base_url).netloc
        self.world = world
        self._tokens: dict[tuple[str, str], str] = {}

    def token(self, user: str, tier: str = "free") -> str:
        tok = self._tokens.get((user, tier))
        if tok is None:
            tok = self._tokens[(user, tier)] = self.fleet.token(user, tier=tier)
        return tok

    def _call(self, route: str, method: str, path: str, *, user: str | None = None, tier: str = "free",
              body: bytes = b"", headers: dict[str, str] | None = None, key: str = "") -> Call:
        h = {"Authorization": f"Bearer {self.token(user, tier)}"} if user else {}
        if body and "content-type" not in {k.lower() for k in (headers or {})}:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return Call(route, build_request(method, path, self.host, h, body), key)

    def dashboard(self, user: str, tier: str = "free") -> Call:
        return self._call("dashboard", "GET", F + "optimized-dashboard?range=month", user=user, tier=tier, key=user)

    def deck(self, user: str) -> Call:
        return self._call("recommendations", "GET", F + "recommendations?limit=10", user=user, key=user)

    def inbox(self, user: str) -> Call:
        return self._call("inbox", "GET", F + "realtime-orchestrator/inbox?limit=20", user=user, key=user)

    def swipes(self, user: str, items: list[tuple[str, str]], key: str | None = None) -> Call:
        body: dict[str, Any] = {"swipes": [{"target_id": t, "action": a} for t, a in items]}
        if key is not None:
            body["idempotency_key"] = key
        return self._call("batch-swipe", "POST", F + "batch-swipe", user=user, body=json.dumps(body).encode(),
                          key=key or "")

    def presign(self, user: str) -> Call:
        body = {"bucket": "avatars", "content_type": "image/png", "content_length": 2048, "filename": "me.png"}
        return self._call("presign", "POST", F + "upload-media/presign", user=user, body=json.dumps(body).encode())

    def media(self, user: str) -> Call:
        return self._call("media list", "GET", F + "upload-media?limit=5", user=user, key=user)

    def upload(self, user: str) -> Call:
        body = samples.form(samples.sized(samples.PNG, 2048))
        return self._call("upload", "POST", F + "upload-media", user=user, body=body,
                          headers={"Content-Type": samples.CONTENT_TYPE}, key=user)

    def webhook(self, user: str) -> Call:
        """A delivery that makes `user` paid: Paystack charge.success or RevenueCat
        INITIAL_PURCHASE (alternately, by the user id's last digit)."""
        if int(user[-1], 16) % 2:
            body = json.dumps(charge(self.world.plan, user_id=user)).encode()
            return self._call("webhook", "POST", F + "webhooks/paystack", body=body,
                              headers=fleet_mod.paystack_headers(body), key=user)
        body = json.dumps(rc("INITIAL_PURCHASE", user)).encode()
        return self._call("webhook", "POST", F + "webhooks/revenuecat", body=body,
                          headers=fleet_mod.revenuecat_headers(), key=user)

    def event(self, recipients: list[str], preview: str = "hi") -> Call:
        """An urgent internal event (Realtime and a push per device), signed by "our functions"."""
        msg_id = str(uuid.uuid4())
        body = json.dumps({"type": "message.received", "data": {"preview": preview}, "recipients": recipients}).encode()
        return self._call("events", "POST", F + "realtime-orchestrator/events", body=body,
                          headers=fleet_mod.standard_webhook_headers(body, msg_id), key=msg_id)

    def drain(self) -> Call:
        return self._call("drain", "POST", F + "realtime-orchestrator/drain",
                          headers={"Authorization": f"Bearer {fleet_mod.DRAIN_SECRET}"})


@pytest.fixture
def requests(stack: Stack, world: World) -> Requests:
    return Requests(stack, world)


class Mix:
    """Calls drawn by weight: `Mix({"dashboard": (12, make), ...})`, each `make()` -> Call."""

    def __init__(self, weights: dict[str, tuple[float, Callable[[], Call]]], seed: int = 7) -> None:
        self.names = list(weights)
        self.weights = [weights[n][0] for n in self.names]
        self.makers = [weights[n][1] for n in self.names]
        self.rng = random.Random(seed)

    def __call__(self) -> Call:
        return self.rng.choices(self.makers, self.weights)[0]()


# -- the load --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    route: str
    key: str
    start: float  # monotonic: when the request was due (open loop)
    end: float
    status: int | None  # None: no answer (the connection broke, or nothing within CLIENT_TIMEOUT_S)
    body: bytes

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


#: a kept-alive connection idle this long is dropped (uvicorn closes them after 5 s)
IDLE_S = 3.0


class Load:
    """Open-loop background load: `rate` calls per second from `make()` until the block ends.

        async with Load(base_url, mix, rate=60) as load:
            ...                       # break something
        load.samples                  # every request's answer

    Connections are kept alive and opened as needed (no cap: a slow server must not be
    hidden by the client queueing its requests). Without `make`, a client for `send()`."""

    def __init__(self, base_url: str, make: Callable[[], Call] | None = None, rate: float = RATE) -> None:
        u = urlsplit(base_url)
        self.host, self.port = u.hostname or "127.0.0.1", int(u.port or 80)
        self.make = make
        self.rate = rate
        self.samples: list[Sample] = []
        self.started = 0.0
        self._stop = asyncio.Event()
        self._idle: list[tuple[Connection, float]] = []
        self._tasks: set[asyncio.Task[Sample]] = set()
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Load:
        self.started = time.monotonic()
        self._runner = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            await asyncio.gather(*self._tasks)
        for conn, _ in self._idle:
            await conn.close()
        self._idle.clear()

    async def _run(self) -> None:
        assert self.make is not None, "a background load needs `make`"
        i = 0
        while not self._stop.is_set():
            due = self.started + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    return
            task = asyncio.create_task(self.send(self.make(), due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            i += 1

    def _connection(self) -> Connection:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if now - since < IDLE_S:
                return conn
            if conn.writer is not None:
                conn.writer.close()
        return Connection(self.host, self.port)

    async def busiest_worker(self) -> int | None:
        """The worker (pid) holding most of this load's kept-alive connections, asked over
        each of them (`/stats`): the one whose death cuts the load's requests."""
        stats = build_request("GET", "/stats", f"{self.host}:{self.port}")
        pids: Counter[int] = Counter()
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            try:
                status, body = await conn.send(stats, timeout=5)
            except Exception:
                await conn.close()
                continue
            if status == 200:
                pids[int(json.loads(body)["pid"])] += 1
            self._idle.append((conn, time.monotonic()))
        return pids.most_common(1)[0][0] if pids else None

    async def on_each_worker(self, make: Callable[[], Call], n: int, workers: int = 2) -> dict[int, list[Sample]]:
        """`n` calls in a row to each worker, over one connection to each (found by asking
        `/stats` on new connections until every worker has answered one)."""
        stats = build_request("GET", "/stats", f"{self.host}:{self.port}")
        conns: dict[int, Connection] = {}
        for _ in range(100):
            if len(conns) >= workers:
                break
            conn = Connection(self.host, self.port)
            status, body = await conn.send(stats, timeout=5)
            pid = int(json.loads(body)["pid"])
            if pid in conns:
                await conn.close()
            else:
                conns[pid] = conn
        out: dict[int, list[Sample]] = {}
        for pid, conn in conns.items():
            out[pid] = []
            for _ in range(n):
                call = make()
                start = time.monotonic()
                try:
                    status, body = await conn.send(call.raw, timeout=CLIENT_TIMEOUT_S)
                except Exception:  # the connection is gone: the rest of this worker's calls too
                    out[pid].append(Sample(call.route, call.key, start, time.monotonic(), None, b""))
                    break
                out[pid].append(Sample(call.route, call.key, start, time.monotonic(), status, body))
            await conn.close()
        return out

    async def send(self, call: Call, due: float | None = None) -> Sample:
        """Send one call now (also outside the background rate) and record its answer."""
        due = time.monotonic() if due is None else due
        conn = self._connection()
        status: int | None = None
        body = b""
        try:
            status, body = await conn.send(call.raw, timeout=CLIENT_TIMEOUT_S)
        except Exception:  # reset, refused, or no answer in time
            await conn.close()
        end = time.monotonic()
        if conn.writer is not None:
            self._idle.append((conn, end))
        sample = Sample(call.route, call.key, due, end, status, body)
        self.samples.append(sample)
        return sample


@dataclass
class Outage:
    """When a service was being stopped, was down, was being started, was back (monotonic)."""

    stopping: float = 0.0
    down: float = 0.0
    starting: float = 0.0
    up: float = 0.0

    def before(self, s: Sample) -> bool:
        return s.end <= self.stopping

    def during(self, s: Sample) -> bool:
        """Sent after the service was down and answered before it was started again."""
        return s.start >= self.down and s.end <= self.starting

    def after(self, s: Sample) -> bool:
        return s.start >= self.up


@contextlib.asynccontextmanager
async def outage(stack: Stack, service: EmbeddedPostgres | EmbeddedRedis,
                 seconds: float = FAULT_SECONDS) -> AsyncIterator[Outage]:
    """Stop `service`, keep it down `seconds`, start it again on the same port (also when the
    block fails). The body runs once the service is down; times are recorded in the Outage."""
    o = Outage(stopping=time.monotonic())
    await stack.run(service.stop)
    o.down = time.monotonic()
    try:
        yield o
        await asyncio.sleep(max(0.0, o.down + seconds - time.monotonic()))
    finally:
        o.starting = time.monotonic()
        await stack.run(service.start)
        o.up = time.monotonic()


# -- checks ----------------------------------------------------------------------------------------


def status_counts(samples: list[Sample]) -> dict[str, int]:
    c = Counter("no answer" if s.status is None else str(s.status) for s in samples)
    return dict(sorted(c.items()))


def by_route(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.route, []).append(s)
    return out


def error_code(s: Sample) -> str:
    """The envelope's error code of an error answer ("" when there is none)."""
    try:
        return str(s.json()["error"]["code"])
    except (ValueError, TypeError, KeyError):
        return ""


def unexpected(samples: list[Sample], expected: dict[str, set[int]]) -> dict[str, dict[str, int]]:
    """Per route, the answers that are not in `expected[route]` (routes not named: any), as
    "status CODE" -> count."""
    bad: dict[str, dict[str, int]] = {}
    for route, ss in by_route(samples).items():
        allowed = expected.get(route)
        if allowed is None:
            continue
        wrong = Counter(f"{s.status or 'no answer'} {error_code(s)}".strip() for s in ss if s.status not in allowed)
        if wrong:
            bad[route] = dict(wrong)
    return bad


def recovery_seconds(samples: list[Sample], since: float, ok: Callable[[Sample], bool]) -> float:
    """Seconds from `since` until the last request that was not `ok` (0: none failed)."""
    late = [s.start for s in samples if s.start >= since and not ok(s)]
    return max(late) - since if late else 0.0


async def worker_pids(base_url: str, expect: int = 2, budget: float = 15.0) -> set[int]:
    """The uvicorn workers' pids, from /stats on fresh connections, asked until `expect`
    different workers answered or `budget` seconds passed. The kernel does not spread
    connections evenly (a busy worker may take many in a row), so a few tries can miss one."""
    u = urlsplit(base_url)
    raw = build_request("GET", "/stats", u.netloc, {"Connection": "close"})
    pids: set[int] = set()
    deadline = time.monotonic() + budget
    while len(pids) < expect and time.monotonic() < deadline:
        conn = Connection(u.hostname or "127.0.0.1", int(u.port or 80))
        try:
            status, body = await conn.send(raw, timeout=5)
            if status == 200:
                pids.add(int(json.loads(body)["pid"]))
        except Exception:  # a worker being replaced
            await asyncio.sleep(0.1)
        finally:
            await conn.close()
    return pids


# -- the report ------------------------------------------------------------------------------------


@dataclass
class FaultRecord:
    """What a test reports: its fault, and the load that ran during it."""

    fault: str = ""
    loads: list[Load] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self, outcome: str) -> dict[str, Any]:
        samples = [s for load in self.loads for s in load.samples]
        answered = [s.ms for s in samples]
        routes = {
            route: {"requests": len(ss), "statuses": status_counts(ss), "max_ms": round(max(s.ms for s in ss), 1)}
            for route, ss in sorted(by_route(samples).items())
        }
        return {"fault": self.fault, "requests": len(samples), "statuses": status_counts(samples),
                "max_ms": round(max(answered), 1) if answered else None, "outcome": outcome,
                "seconds": FAULT_SECONDS, "routes": routes, **self.notes}


_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when == "call":
        item.stash[_CALL_REPORT] = rep


def _outcome(rep: pytest.TestReport | None) -> str:
    if rep is None:
        return "error"
    if rep.passed:
        return "passed"
    crash = getattr(rep.longrepr, "reprcrash", None)
    message = str(getattr(crash, "message", "") or rep.longrepr).strip().splitlines()
    return f"{rep.outcome}: {message[0][:300] if message else ''}"


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Iterator[FaultRecord]:
    """The test fills it in; one JSON line goes to $EDGEFN_FAULTS_REPORT after the test."""
    record = FaultRecord(fault=request.node.name)
    yield record
    target = os.environ.get("EDGEFN_FAULTS_REPORT")
    if target:
        line = record.line(_outcome(request.node.stash.get(_CALL_REPORT, None)))
        with Path(target).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
