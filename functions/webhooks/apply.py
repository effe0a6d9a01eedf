"""Applying a stored delivery: fold its stream (state.py) and write what changed.

Inside the delivery's transaction, after the stream's advisory lock (so two deliveries of
one stream fold one after the other, each seeing the other's fact):

1. find the stream(s): the delivery's own; a refund's is its charge's (until the charge is
   recorded the refund waits, `pending`); a TRANSFER's are every purchase naming a user it
   moves from, or from whom an earlier TRANSFER moved purchases to one of those users
   (none yet: it waits);
2. load every fact of the stream (one round trip; refunds waiting for one of its charges
   and TRANSFERs naming one of its users join it here), and, in one more, the users, plans
   and subscription rows the facts name;
3. fold; upsert the rows that differ; record anew the outcome of every other delivery of
   the stream the fold decided differently (a refund parked until now becomes `applied`
   in the transaction of the charge that arrived);
4. hand back the users whose tier must be recomputed (every user the stream names or
   owned), announced when a row of the stream changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from functions.webhooks import paystack, revenuecat
from functions.webhooks.delivery import FoldContext, Parsed, iso
from functions.webhooks.queries import Plan, Store, Subscription, TierUpdate, _sub
from functions.webhooks.settings import WebhooksSettings
from functions.webhooks.state import FOLDED, Fact, Folded, Result, Row, order_key

PROVIDERS: dict[str, ModuleType] = {"paystack": paystack, "revenuecat": revenuecat}
#: facts whose effect a newer one can supersede (the others are kept whatever their time)
ORDERED = frozenset({"rc", "invoice_failed", "sub_create"})


@dataclass(slots=True)
class Applied:
    outcome: str
    error: str | None = None
    user_id: str | None = None
    subscription_id: str | None = None
    tiers: list[TierUpdate] = field(default_factory=list)


def _same(old: Subscription, owner: str, row: Row) -> bool:
    a, b = old.state, row.state
    return (old.user_id, a.status, a.tier, a.plan_code, a.current_period_end, a.last_event_at, a.metadata) == (
        owner, b.status, b.tier, b.plan_code, b.current_period_end, b.last_event_at, _plain(b.metadata))


def _plain(value: Any) -> Any:
    """As the row would read back from jsonb (times as ISO strings)."""
    import json

    return json.loads(json.dumps(value, default=str))


async def apply(store: Store, p: Parsed, delivery_id: int, settings: WebhooksSettings) -> Applied:
    assert p.fact is not None
    if p.fact["kind"] == "transfer":
        keys = await _chain(store, p.provider, p.keys or [])
        streams = await store.streams_with(p.provider, keys)
        if not streams:
            return Applied("pending", f"waits for a purchase by {', '.join(p.fact['from'])}")
        await store.lock(p.provider, [f"s/{s}" for s in streams])
    elif p.stream is None:
        assert p.waits is not None
        stream = await store.stream_for(p.provider, p.waits)
        if stream is None:
            return Applied("pending", f"refund of charge {p.waits.removeprefix('ref:')}, which has not arrived")
        await store.lock(p.provider, [f"s/{stream}"])
        await store.store_fact(delivery_id, p.fact, stream, p.keys, p.waits)
        streams = [stream]
    else:
        streams = [p.stream]
    mine: list[Applied] = []
    tiers: dict[str, TierUpdate] = {}
    for stream in streams:
        a = await fold_stream(store, p.provider, stream, delivery_id, settings)
        mine.append(a)
        for t in a.tiers:
            prev = tiers.get(t.user_id)
            tiers[t.user_id] = t if prev is None else TierUpdate(t.user_id, t.payload, prev.changed or t.changed)
    best = next((a for a in mine if a.outcome == "applied"), mine[0])
    best.tiers = [tiers[u] for u in sorted(tiers)]
    return best


async def prelocks(store: Store, p: Parsed) -> list[str]:
    """Key locks a TRANSFER will take along its chain (`_chain`), as read before any lock:
    taken with its own, in the one sorted order, so that two deliveries of one chain (a
    TRANSFER and a retry of the one before it) do not lock its users in opposite orders."""
    if p.fact is None or p.fact.get("kind") != "transfer":
        return []
    return [f"k/{k}" for k in await _chain(store, p.provider, p.keys or [], lock=False)]


async def _chain(store: Store, provider: str, keys: list[str], *, lock: bool = True) -> list[str]:
    """A TRANSFER's users and, transitively, the users earlier TRANSFERs moved purchases
    from to them (A->B recorded, then B->C arrives: B's purchases are A's). TRANSFERs have
    no stream of their own, so B->C finds the purchase only through A. Each key found is
    locked (after the delivery's own key locks, so in a fixed order per delivery) before it
    is looked up from; a rare cycle with another delivery is a deadlock, answered 503 and
    retried. A TRANSFER locks its receiving users too (`Parsed.locks`), so one moving to a
    user this delivery looks up from is either committed and seen here, or waits for it."""
    found = list(keys)
    new = list(keys)
    while new:
        back = await store.transfers_to(provider, [k.removeprefix("rc:") for k in new])
        new = sorted({f"rc:{u}" for u in back} - set(found))
        if new and lock:  # (taken again when `prelocks` has: the same session, no wait)
            await store.lock(provider, [f"k/{k}" for k in new])
            found += new
    return sorted(found)


async def _facts(store: Store, provider: str, stream: str) -> list[dict[str, Any]]:
    rows = await store.load_stream(provider, stream)
    if provider == "revenuecat":  # a TRANSFER onwards from a user another TRANSFER moved to
        while True:
            known = {k for r in rows for k in (r["keys"] or [])}
            to = {f"rc:{i}" for r in rows if r["fact"]["kind"] == "transfer" for i in r["fact"]["to"]} - known
            more = await store.more_transfers(sorted(to), [r["id"] for r in rows]) if to else []
            if not more:
                break
            rows += more
    return rows


async def fold_stream(store: Store, provider: str, stream: str, delivery_id: int,
                      settings: WebhooksSettings) -> Applied:
    mod = PROVIDERS[provider]
    rows = await _facts(store, provider, stream)
    # the receipt time rides along: only a provider snapshot is ever compared with it
    facts = [Fact.from_json(int(r["id"]), r["dedupe_key"], {**r["fact"], "received": iso(r["received_at"])})
             for r in rows]
    uids, ext, emails, plans = mod.identifiers(facts)
    user_rows, plan_rows, sub_rows = await store.context_rows(provider, uids, ext, emails, plans, stream)
    users = {f"{r['kind']}:{r['value']}": r["user_id"] for r in user_rows}
    by_plan: dict[str, Plan] = {}
    for r in plan_rows:
        plan = Plan(r["code"], r["tier"], int(r["amount_minor"]), r["currency"].strip(), r["interval"])
        by_plan[f"code:{r['code']}"] = plan
        if r["provider_plan_code"]:
            by_plan[f"pp:{r['provider_plan_code']}"] = plan
    ctx = FoldContext(users, by_plan, settings.revenuecat_allow_sandbox, settings.revenuecat_entitlement_tier)
    folded: Folded = mod.fold(facts, ctx, stream)

    existing = {s.provider_ref: s for s in map(_sub, sub_rows)}
    missing = [ref for ref in folded.rows if ref not in existing]
    if missing:
        existing.update({s.provider_ref: s for s in map(_sub, await store.legacy_rows(provider, missing))})
    changed: list[str] = []
    for ref, row in sorted(folded.rows.items()):
        old = existing.get(ref)
        if row.owner is None or (old is not None and _same(old, row.owner, row)):
            continue
        store.save_row(provider, stream, ref, row.owner, row.state)
        changed.append(ref)
    ids = dict(zip(changed, await store.write_rows(), strict=True))
    ids.update({ref: s.id for ref, s in existing.items() if ref not in ids})
    store.learn(provider, folded.learnt)

    for r in rows:
        did = int(r["id"])
        res = folded.results.get(did)
        if did == delivery_id or res is None or r["outcome"] not in FOLDED:
            continue
        outcome = res.outcome
        if r["outcome"] in ("applied", "stale") and outcome in ("applied", "stale"):
            outcome = r["outcome"]
        if (outcome, res.error) != (r["outcome"], r["error"]):
            store.set_outcome(did, outcome, res.error, res.user_id, ids.get(res.ref or ""))

    res = folded.results.get(delivery_id) or Result("applied")
    outcome = res.outcome
    fact = next((f for f in facts if f.delivery_id == delivery_id), None)
    row = folded.rows.get(res.ref or "")
    if (outcome == "applied" and row is not None and res.ref not in changed and fact is not None
            and fact.kind in ORDERED and row.newest is not None and order_key(fact) < row.newest):
        outcome = "stale"  # newer events of its subscription were there first: it changed nothing

    involved = {u for u in (*(r.owner for r in folded.rows.values()), *(s.user_id for s in existing.values()),
                            *(x.user_id for x in folded.results.values())) if u}
    tiers = []
    for user in sorted(involved):
        payload: dict[str, Any] = {"user_id": user, "provider": provider}
        own = sorted(ref for ref, r in folded.rows.items() if r.owner == user)
        if own:
            r0 = folded.rows[own[0]]
            payload.update(subscription_id=ids.get(own[0]), status=r0.state.status, plan_code=r0.state.plan_code,
                           current_period_end=iso(r0.state.current_period_end))
        tiers.append(TierUpdate(user, payload, bool(changed)))
    return Applied(outcome, res.error, res.user_id, ids.get(res.ref or ""), tiers)
