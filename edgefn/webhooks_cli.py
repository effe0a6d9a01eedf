"""`edgefn webhooks replay`: apply stored webhook deliveries again.
(`edgefn webhooks trigger`, a signed test delivery, is edgefn/webhooks_trigger.py.)

    edgefn webhooks replay --since 2h                    # everything received (or dated) in the last 2 hours
    edgefn webhooks replay --since 2026-05-01T00:00Z --until 2026-05-02 --provider paystack
    edgefn webhooks replay --since 7d --outcome failed,pending --dry-run
    edgefn webhooks replay --pending                     # what the scheduled job does

After a bug fix, `--since` re-applies every stored delivery in the window, oldest event
first, through the same code as a live delivery. Applying is idempotent (events are
ordered by their own time, paid periods are recorded per charge, refunds once), so only
what the fixed code decides differently changes. `--pending` retries the deliveries still
waiting (unknown user, failed re-read, refund before its charge) or failed, pushes tiers
whose Redis write failed, and downgrades lapsed paid tiers.

Configuration comes from the environment like the function's own (DATABASE_URL or
--database-url, REDIS_URL or UPSTASH_*, KEY_PREFIX, REVENUECAT_* for re-reads). Without
Redis the tiers are queued in the database for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefn.cli import CommandError

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
OUTCOMES = ("received", "applied", "stale", "ignored", "flagged", "pending", "failed", "invalid")


def parse_when(value: str, *, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (naive means UTC) or a duration back from now: 90m, 2h, 7d, 1w."""
    now = now or datetime.now(UTC)
    text = value.strip()
    m = _RELATIVE.match(text.lower())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"cannot read the time {value!r}: give ISO-8601 (2026-05-01T00:00Z) or 90m, 2h, 7d") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("replay", help="apply stored deliveries again (idempotent)", description=__doc__)
    p.add_argument("--since", help="from this event time: ISO-8601, or a duration back from now (2h, 7d)")
    p.add_argument("--until", help="up to (not including) this event time")
    p.add_argument("--provider", choices=("paystack", "revenuecat"))
    p.add_argument("--outcome", help=f"only deliveries with these outcomes, comma-separated ({', '.join(OUTCOMES)})")
    p.add_argument("--pending", action="store_true", help="retry pending and failed deliveries, queued tiers, lapsed tiers")
    p.add_argument("--limit", type=int, default=10_000, help="at most this many deliveries (default 10000)")
    p.add_argument("--dry-run", action="store_true", help="list what would be replayed, change nothing")
    p.add_argument("--database-url", default=None, help="Postgres DSN (default: DATABASE_URL)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    from edgefn import webhooks_trigger

    t = sub.add_parser("trigger", help="send a realistic, signed delivery of one provider event to a local server",
                       description=webhooks_trigger.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    webhooks_trigger.add_arguments(t)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "trigger":
        from edgefn import webhooks_trigger

        return webhooks_trigger.run(args)
    if getattr(args, "action", None) != "replay":
        raise CommandError("say what to do: edgefn webhooks replay --since 2h (or --pending), "
                           "or edgefn webhooks trigger paystack charge.success")
    if not args.pending and not args.since:
        raise CommandError("give --since (e.g. --since 2h) or --pending")
    outcomes = [o.strip() for o in args.outcome.split(",") if o.strip()] if args.outcome else None
    for o in outcomes or ():
        if o not in OUTCOMES:
            raise CommandError(f"unknown outcome {o!r} (one of {', '.join(OUTCOMES)})")
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    dsn = args.database_url or os.environ.get("DATABASE_URL", "")
    if not dsn.strip():
        raise CommandError("DATABASE_URL is not set (pass --database-url or set DATABASE_URL)")

    from functions.webhooks.settings import WebhooksSettings
    from shared.settings import ConfigError

    try:
        settings = WebhooksSettings.load(database_url=dsn)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    summary = asyncio.run(_run(settings, args, since, until, outcomes))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(" ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in summary.items()))
    return 0


async def _run(settings: Any, args: argparse.Namespace, since: datetime | None, until: datetime | None,
               outcomes: list[str] | None) -> dict[str, Any]:
    from functions.webhooks.reconcile import reconcile, replay
    from shared import errors
    from shared.services import Services

    services = Services(settings)
    try:
        if args.pending:
            return await reconcile(services, settings, limit=args.limit)
        assert since is not None

        def show(row: dict[str, Any], result: Any) -> None:
            after = "(dry run)" if result is None else ("unchanged" if result.duplicate else result.outcome)
            if not args.json:
                print(f"#{row['id']} {row['provider']} {row['event_type'] or '-'} {row['dedupe_key']}: "
                      f"{row['outcome']} -> {after}", flush=True)

        return await replay(services, settings, since=since, until=until, provider=args.provider,
                            outcomes=outcomes, limit=args.limit, dry_run=args.dry_run, on_result=show)
    except errors.ServiceUnavailable as exc:
        raise CommandError(f"{exc.code}: {exc.message}") from None
    finally:
        await services.aclose()
