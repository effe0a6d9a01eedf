"""`edgefn outbox`: what the realtime orchestrator has in flight, and its dead letters.

    edgefn outbox status                  # DATABASE_URL from the environment
    edgefn outbox status --json --dead 50
    edgefn outbox requeue --dead          # give dead deliveries another round of attempts
    edgefn outbox requeue --id 812 --id 813

`status` prints the outbox (pending, oldest pending age, routed, rejected), the deliveries
by channel and state, the backlog age per channel (how long the oldest undelivered delivery
has waited since it was due), and the most recent dead letters with their last error. `requeue`
moves dead deliveries back to pending with their attempts reset (after the cause is fixed:
a provider key, a configuration); it never touches sent ones, so nothing is sent twice.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from edgefn.cli import CommandError

STATUS_SQL = {
    "outbox": """
        select count(*) filter (where processed_at is null) as pending,
               count(*) filter (where processed_at is not null and last_error is null) as routed,
               count(*) filter (where processed_at is not null and last_error is not null) as rejected,
               extract(epoch from now() - min(created_at) filter (where processed_at is null)) as oldest_pending_s
        from public.outbox
    """,
    "deliveries": """
        select channel, status, count(*) as n,
               extract(epoch from now() - min(due_at) filter (where status in ('pending', 'leased') and due_at <= now()))
                   as backlog_s
        from public.event_deliveries group by channel, status order by channel, status
    """,
    "dead": """
        select id, event_id::text as event_id, channel, target, event_type, attempts, last_error, created_at
        from public.event_deliveries where status = 'dead' order by id desc limit %s
    """,
    "rejected": """
        select id, event_id::text as event_id, event_type, last_error, created_at from public.outbox
        where processed_at is not null and last_error is not null order by id desc limit %s
    """,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="outbox_command", metavar="ACTION")
    for name, text in (("status", "counts by state and the latest dead letters"),
                       ("requeue", "move dead deliveries back to pending")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--database-url", default=None,
                       help="Postgres DSN (default: the DATABASE_URL environment variable)")
        if name == "status":
            p.add_argument("--dead", type=int, default=20, metavar="N", help="list the N latest dead letters (default 20)")
            p.add_argument("--json", action="store_true", help="print one JSON document")
        else:
            p.add_argument("--dead", action="store_true", help="every dead delivery")
            p.add_argument("--id", type=int, action="append", default=[], help="this delivery (repeatable)")
            p.add_argument("--channel", choices=("realtime", "push", "cache"), help="only this channel")


def _connect(args: argparse.Namespace) -> Any:
    import psycopg

    from edgefn.migrate import database_url

    try:
        return psycopg.connect(database_url(args), autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError:
        raise CommandError("the database URL is not a valid Postgres connection string") from None
    except psycopg.Error as exc:
        raise CommandError(f"cannot connect to the database: {str(exc).strip().splitlines()[0]}") from None


def collect(conn: Any, dead: int = 20) -> dict[str, Any]:
    import psycopg
    from psycopg.rows import dict_row

    cur = conn.cursor(row_factory=dict_row)
    try:
        outbox = cur.execute(STATUS_SQL["outbox"]).fetchone()
        rows = cur.execute(STATUS_SQL["deliveries"]).fetchall()
        dead_rows = cur.execute(STATUS_SQL["dead"], (dead,)).fetchall()
        rejected = cur.execute(STATUS_SQL["rejected"], (dead,)).fetchall()
    except psycopg.errors.UndefinedTable:
        raise CommandError("no outbox here: run `edgefn migrate` first") from None
    deliveries: dict[str, dict[str, int]] = {}
    backlog: dict[str, float] = {}
    for r in rows:
        deliveries.setdefault(r["channel"], {})[r["status"]] = int(r["n"])
        if r["backlog_s"] is not None:
            backlog[r["channel"]] = max(backlog.get(r["channel"], 0.0), round(float(r["backlog_s"]), 1))
    return {
        "at": datetime.now(timezone.utc).isoformat(),
        "outbox": {k: (round(float(v), 1) if k == "oldest_pending_s" and v is not None else v) for k, v in outbox.items()},
        "deliveries": deliveries,
        "backlog_age_s": backlog,
        "dead_letters": [{**r, "created_at": r["created_at"].isoformat()} for r in dead_rows],
        "rejected_events": [{**r, "created_at": r["created_at"].isoformat()} for r in rejected],
    }


def render(status: dict[str, Any]) -> str:
    o = status["outbox"]
    lines = [
        f"outbox: {o['pending']} pending"
        + (f" (oldest {o['oldest_pending_s']} s)" if o["oldest_pending_s"] is not None else "")
        + f", {o['routed']} routed, {o['rejected']} rejected",
        "",
        f"{'channel':<10}{'pending':>9}{'leased':>8}{'sent':>10}{'dead':>7}{'dropped':>9}{'suppressed':>12}",
    ]
    for channel in ("realtime", "push", "cache"):
        c = status["deliveries"].get(channel, {})
        lines.append(f"{channel:<10}{c.get('pending', 0):>9}{c.get('leased', 0):>8}{c.get('sent', 0):>10}"
                     f"{c.get('dead', 0):>7}{c.get('dropped', 0):>9}{c.get('suppressed', 0):>12}")
    if status["backlog_age_s"]:
        lines.append("backlog age: " + ", ".join(f"{k} {v} s" for k, v in status["backlog_age_s"].items()))
    if status["dead_letters"]:
        lines += ["", "dead letters (latest first):"]
        for d in status["dead_letters"]:
            lines.append(f"  #{d['id']} {d['channel']} {d['event_type']} -> {d['target']} "
                         f"after {d['attempts']} attempts: {d['last_error'] or '?'}")
    if status["rejected_events"]:
        lines += ["", "rejected events (latest first):"]
        for r in status["rejected_events"]:
            lines.append(f"  outbox #{r['id']} {r['event_type']} {r['event_id']}: {r['last_error']}")
    return "\n".join(lines)


def requeue(conn: Any, *, ids: list[int], all_dead: bool, channel: str | None) -> int:
    if not ids and not all_dead:
        raise CommandError("say which: --dead (all dead deliveries) or --id N")
    sql = ("update public.event_deliveries set status = 'pending', attempts = 0, throttles = 0, available_at = now(), "
           "due_at = now(), lease_owner = null where status = 'dead'")
    params: list[Any] = []
    if ids:
        sql += " and id = any(%s)"
        params.append(ids)
    if channel:
        sql += " and channel = %s"
        params.append(channel)
    return int(conn.execute(sql, params).rowcount)


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "outbox_command", None):
        raise CommandError("say what: `edgefn outbox status` or `edgefn outbox requeue`")
    with _connect(args) as conn:
        if args.outbox_command == "status":
            status = collect(conn, args.dead)
            print(json.dumps(status, default=str, indent=2) if args.json else render(status))
            return 0
        n = requeue(conn, ids=args.id, all_dead=args.dead, channel=args.channel)
        print(f"requeued {n} dead deliver{'y' if n == 1 else 'ies'}")
        return 0
