"""POST /webhooks/revenuecat: the Authorization value, event ids, ordering by
event_timestamp_ms, user lookup through aliases, TRANSFER, and the optional re-read of the
subscriber from the RevenueCat API (against a local server that records what it got)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.factories import create_user
from tests.functions.webhooks.conftest import NOW, RC_AUTH, Hooks, iso, ms, rc


async def test_initial_purchase_grants_paid_until_expiration(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    expires = NOW + timedelta(days=7)
    ev = rc("INITIAL_PURCHASE", user, expires=expires)
    r = await hooks.revenuecat(ev)
    assert r.status_code == 200, r.text
    ack = r.json()["data"]
    assert ack["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert (sub["provider"], sub["provider_ref"], sub["status"], sub["tier"]) == ("revenuecat", f"otx-{user}", "active", "paid")
    assert sub["current_period_end"] == expires
    assert sub["plan_code"] == "com.subscription.weekly"
    assert await hooks.tier(user) == "paid" and await hooks.redis_tier(user) == "paid"
    stored = await hooks.delivery(ack["delivery_id"])
    assert stored["dedupe_key"] == ev["event"]["id"] and stored["event_type"] == "INITIAL_PURCHASE"
    assert stored["event_at"].timestamp() * 1000 == ev["event"]["event_timestamp_ms"]
    assert "authorization" not in stored["headers"]  # the shared secret is never stored
    assert json.loads(bytes(stored["body"])) == ev


async def test_wrong_or_missing_authorization_is_401_and_writes_nothing(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    ev = rc("INITIAL_PURCHASE", user)
    for auth in (None, "", RC_AUTH[:-1], RC_AUTH + "x", RC_AUTH.lower(), "Bearer " + RC_AUTH):
        r = await hooks.revenuecat(ev, auth=auth)
        assert r.status_code == 401, auth
        assert r.json()["error"]["code"] == "INVALID_AUTHORIZATION"
    assert await hooks.deliveries("revenuecat", ev["event"]["id"]) == []
    assert await hooks.tier(user) == "free"


async def test_a_late_cancellation_never_overwrites_a_newer_renewal(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    t0 = NOW - timedelta(hours=3)
    await hooks.revenuecat(rc("INITIAL_PURCHASE", user, at=t0, expires=NOW + timedelta(minutes=30)))
    renewal_end = NOW + timedelta(days=30)
    await hooks.revenuecat(rc("RENEWAL", user, at=t0 + timedelta(hours=2), expires=renewal_end))
    # generated between the two, delivered last (CANCELLATION can take up to 2 h)
    late = rc("CANCELLATION", user, at=t0 + timedelta(hours=1), expires=NOW + timedelta(minutes=30),
              template="cancellation", cancel_reason="UNSUBSCRIBE")
    r = await hooks.revenuecat(late)
    assert r.json()["data"]["outcome"] == "stale"
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "active" and sub["current_period_end"] == renewal_end
    assert sub["last_event_at"] == t0 + timedelta(hours=2)
    # a newer cancellation does apply, and access lasts to the period end
    r = await hooks.revenuecat(rc("CANCELLATION", user, at=NOW, expires=renewal_end, template="cancellation"))
    assert r.json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "cancelled" and sub["metadata"]["cancel_reason"] == "UNSUBSCRIBE"
    assert await hooks.tier(user) == "paid"


async def test_expiration_revokes(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    await hooks.revenuecat(rc("INITIAL_PURCHASE", user, at=NOW - timedelta(days=7), expires=NOW + timedelta(days=1)))
    assert await hooks.redis_tier(user) == "paid"
    await hooks.revenuecat(rc("EXPIRATION", user, at=NOW, expires=NOW - timedelta(minutes=1)))
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "expired"
    assert await hooks.tier(user) == "free" and await hooks.redis_tier(user) == "free"
    [event] = await hooks.events(user)  # collapsed while waiting: the state now
    assert (event["payload"]["tier"], event["payload"]["status"]) == ("free", "expired")


async def test_billing_issue_keeps_access_through_the_grace_period(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    await hooks.revenuecat(rc("INITIAL_PURCHASE", user, at=NOW - timedelta(days=7), expires=NOW - timedelta(hours=1)))
    grace = NOW + timedelta(days=3)
    ev = rc("BILLING_ISSUE", user, expires=NOW - timedelta(hours=1), grace_period_expiration_at_ms=ms(grace))
    assert (await hooks.revenuecat(ev)).json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "past_due" and sub["current_period_end"] == grace
    assert await hooks.tier(user) == "paid"


async def test_users_are_found_by_aliases_and_remembered(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    anon = f"$RCAnonymousID:{uuid.uuid4().hex}"
    # bought before logging in: app_user_id is anonymous, our id is an alias
    ev = rc("INITIAL_PURCHASE", anon, aliases=[anon, user], original_transaction_id="otx-alias")
    assert (await hooks.revenuecat(ev)).json()["data"]["outcome"] == "applied"
    assert await hooks.tier(user) == "paid"
    # a later event that names only the anonymous id still finds the user
    later = rc("CANCELLATION", anon, aliases=[], original_transaction_id="otx-alias", template="cancellation",
               at=NOW + timedelta(seconds=1))
    assert (await hooks.revenuecat(later)).json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "cancelled"


async def test_transfer_moves_the_subscription(hooks: Hooks, database_url: str) -> None:
    old, new = await create_user(database_url), await create_user(database_url)
    await hooks.revenuecat(rc("INITIAL_PURCHASE", old, original_transaction_id="otx-transfer", at=NOW - timedelta(hours=1)))
    assert await hooks.tier(old) == "paid"
    ev = rc("TRANSFER", None, transferred_from=[old], transferred_to=[new])
    assert (await hooks.revenuecat(ev)).json()["data"]["outcome"] == "applied"
    assert await hooks.subscriptions(old) == []
    [sub] = await hooks.subscriptions(new)
    assert sub["provider_ref"] == "otx-transfer"
    assert (await hooks.tier(old), await hooks.tier(new)) == ("free", "paid")
    assert (await hooks.redis_tier(old), await hooks.redis_tier(new)) == ("free", "paid")


async def test_a_chain_of_transfers_delivered_in_order_ends_with_the_last_receiver(
    hooks: Hooks, database_url: str,
) -> None:
    """P (by A), then A->B, then B->C, in that order: B->C finds the purchase through the
    recorded A->B (TRANSFERs have no stream of their own), as it would out of order."""
    a, b, c = [await create_user(database_url) for _ in range(3)]
    otx = f"otx-chain-{uuid.uuid4().hex[:8]}"
    await hooks.revenuecat(rc("INITIAL_PURCHASE", a, original_transaction_id=otx, at=NOW - timedelta(hours=3)))
    first = rc("TRANSFER", None, transferred_from=[a], transferred_to=[b], at=NOW - timedelta(hours=2))
    assert (await hooks.revenuecat(first)).json()["data"]["outcome"] == "applied"
    second = rc("TRANSFER", None, transferred_from=[b], transferred_to=[c], at=NOW - timedelta(hours=1))
    assert (await hooks.revenuecat(second)).json()["data"]["outcome"] == "applied"
    assert await hooks.subscriptions(a) == [] and await hooks.subscriptions(b) == []
    [sub] = await hooks.subscriptions(c)
    assert (sub["provider_ref"], sub["metadata"]["transferred_from"]) == (otx, b)
    assert [await hooks.tier(u) for u in (a, b, c)] == ["free", "free", "paid"]
    assert [await hooks.redis_tier(u) for u in (a, b, c)] == ["free", "free", "paid"]


async def test_test_events_unknown_types_and_fields_are_tolerated(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    r = await hooks.revenuecat(rc("TEST", user))
    assert r.status_code == 200 and r.json()["data"]["outcome"] == "ignored"
    future = rc("SUBSCRIPTION_TELEPORTED", user, brand_new_field={"x": [1, 2]}, price="not a number either")
    r = await hooks.revenuecat(future)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["outcome"] == "ignored"
    r = await hooks.revenuecat(rc("SUBSCRIBER_ALIAS", user, some_new_field=1))
    assert r.json()["data"]["outcome"] == "ignored"
    assert await hooks.tier(user) == "free"


async def test_sandbox_events_can_be_refused(make_hooks: Any, database_url: str) -> None:
    hooks = make_hooks(revenuecat_allow_sandbox=False)
    user = await create_user(database_url)
    r = await hooks.revenuecat(rc("INITIAL_PURCHASE", user, environment="SANDBOX"))
    assert r.json()["data"]["outcome"] == "ignored"
    assert await hooks.tier(user) == "free"


async def test_unknown_user_is_pending_until_the_account_exists(hooks: Hooks, database_url: str) -> None:
    from functions.webhooks.reconcile import reconcile

    user = str(uuid.uuid4())
    ack = (await hooks.revenuecat(rc("INITIAL_PURCHASE", user))).json()["data"]
    assert ack["outcome"] == "pending"
    # the provider retries: still pending, still 200, still one row
    again = (await hooks.revenuecat(rc("INITIAL_PURCHASE", user, event_id=(await hooks.delivery(ack["delivery_id"]))["dedupe_key"])))
    assert again.status_code == 200 and again.json()["data"]["delivery_id"] == ack["delivery_id"]
    await create_user(database_url, user_id=user)
    await reconcile(hooks.services)
    assert (await hooks.delivery(ack["delivery_id"]))["outcome"] == "applied"
    assert await hooks.tier(user) == "paid"


# -- the optional re-read of the subscriber -------------------------------------------------


class RevenueCatAPI:
    """A local stand-in for GET /v1/subscribers/{id}: answers `subscriber`, after `delay`
    seconds, and records every request it got."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.subscriber: dict[str, Any] = {}
        self.delay = 0.0
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append({"path": self.path, "authorization": self.headers.get("authorization")})
                time.sleep(outer.delay)
                body = json.dumps({"request_date_ms": ms(NOW), "subscriber": outer.subscriber}).encode()
                try:
                    self.send_response(outer.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (the timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rc_api() -> Iterator[RevenueCatAPI]:
    api = RevenueCatAPI()
    yield api
    api.close()


async def test_reread_applies_what_the_api_says(make_hooks: Any, rc_api: RevenueCatAPI, database_url: str) -> None:
    hooks = make_hooks(revenuecat_verify=True, revenuecat_api_key="sk_rc_test", revenuecat_api_url=rc_api.url)
    user = await create_user(database_url)
    truth = NOW + timedelta(days=30)
    rc_api.subscriber = {"subscriptions": {"com.subscription.weekly": {
        "expires_date": iso(truth), "unsubscribe_detected_at": iso(NOW), "billing_issues_detected_at": None}}}
    r = await hooks.revenuecat(rc("INITIAL_PURCHASE", user, expires=NOW + timedelta(days=7)))
    assert r.json()["data"]["outcome"] == "applied"
    assert rc_api.requests == [{"path": f"/v1/subscribers/{user}", "authorization": "Bearer sk_rc_test"}]
    [sub] = await hooks.subscriptions(user)
    assert sub["current_period_end"] == truth and sub["status"] == "cancelled"  # the API's view won
    assert await hooks.tier(user) == "paid"


async def test_an_expiry_racing_a_new_purchase_of_the_same_user_leaves_the_user_paid(
    hooks: Hooks, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store upgrade: the old purchase's EXPIRATION and the new purchase's INITIAL_PURCHASE
    (two streams, one user, no RevenueCat id in common) at the same time. The purchase's transaction is held open with
    the user's tier written; the expiry's transaction runs up to its tier recompute and
    waits for it. Released, the recompute must see the new purchase: paid, in Postgres and
    in Redis (a recompute that read the subscriptions before waiting wrote free)."""
    from functions.webhooks import logic

    user = await create_user(database_url)
    old, new = f"otx-old-{uuid.uuid4().hex[:8]}", f"otx-new-{uuid.uuid4().hex[:8]}"
    await hooks.revenuecat(rc("INITIAL_PURCHASE", user, original_transaction_id=old, at=NOW - timedelta(days=20),
                              aliases=[]))
    assert await hooks.tier(user) == "paid"

    real = logic.push_tiers
    holding, release = asyncio.Event(), asyncio.Event()
    held: list[int] = []

    async def hold_first(services: Any, store: Any, tiers: dict[str, str]) -> None:
        await real(services, store, tiers)
        if not held:  # the purchase: its rows and the user's tier written, not committed
            held.append((await (await store.conn.execute("select pg_backend_pid()")).fetchone())[0])
            holding.set()
            await release.wait()

    monkeypatch.setattr(logic, "push_tiers", hold_first)
    # the new purchase names the user only by an app user id learnt before: no key lock in
    # common with the old purchase's events, which name the account
    other_id = f"$RCAnonymousID:{uuid.uuid4().hex}"
    await hooks.rows("insert into public.billing_customers (provider, external_id, user_id) "
                     "values ('revenuecat', %s, %s)", (other_id, user))
    purchase = asyncio.create_task(hooks.revenuecat(
        rc("INITIAL_PURCHASE", other_id, original_transaction_id=new, at=NOW - timedelta(minutes=1), aliases=[])))
    await asyncio.wait_for(holding.wait(), 10)
    expiry = asyncio.create_task(hooks.revenuecat(
        rc("EXPIRATION", user, original_transaction_id=old, at=NOW - timedelta(minutes=1), expires=NOW,
           aliases=[])))
    for _ in range(500):  # until the expiry's transaction waits for the purchase's
        r = await hooks.row("select count(*) as n from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                            (held[0],))
        if r and r["n"]:
            break
        assert not expiry.done(), (await expiry).text
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the expiry never waited for the purchase")
    release.set()
    assert (await purchase).json()["data"]["outcome"] == "applied"
    assert (await expiry).json()["data"]["outcome"] == "applied"
    statuses = {s["provider_ref"]: s["status"] for s in await hooks.subscriptions(user)}
    assert statuses == {old: "expired", new: "active"}
    assert (await hooks.tier(user), await hooks.redis_tier(user)) == ("paid", "paid")
