"""What sending one batch of rows costs the caller's CPU (the event loop's), per form:

    python -m bench.bulk_params [--rows 500] [--rounds 15]

The orchestrator writes a whole batch in one statement (FINISH: 500 leased deliveries, 11
columns; INSERT_ROUTED: up to 200 events' deliveries with a jsonb payload each). The
baseline sends each column as an array parameter (`unnest(%s::bigint[], %s::text[], ...)`),
which psycopg dumps element by element in Python; the form used now sends the rows as one
jsonb document (`shared.db.records`, read with `jsonb_to_recordset`). Both run the same
statement shape against a real Postgres (DATABASE_URL, or an embedded one), interleaved over
`--rounds` rounds; the figure is the calling thread's CPU time per statement (median), which
is what the event loop is held for, and the ratio of the two.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench import harness

COLUMNS = ("id bigint, status text, available_at timestamptz, uncount int, error text, sent_at timestamptz, "
           "outcome text, code int, ms real, counted bool, throttled int, payload jsonb")
ARRAYS = ("select count(*) from unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::int[], %s::text[], "
          "%s::timestamptz[], %s::text[], %s::int[], %s::real[], %s::bool[], %s::int[], %s::jsonb[]) as x(" +
          ", ".join(c.split()[0] for c in COLUMNS.split(", ")) + ")")
RECORDS = f"select count(*) from jsonb_to_recordset(%s::jsonb) as x({COLUMNS})"


def batch(n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {"id": i, "status": "sent", "available_at": now, "uncount": 0, "error": None if i % 7 else 'HTTP 503 "busy"',
         "sent_at": now, "outcome": "sent", "code": 202, "ms": 1.5 + i % 10, "counted": True, "throttled": 0,
         "payload": {"type": "broadcast", "event": "match.created",
                     "payload": {"match_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "id": i}}}
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> int:
    import psycopg
    from psycopg.types.json import Jsonb

    from shared.db import records

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    rows = batch(args.rows)
    names = [c.split()[0] for c in COLUMNS.split(", ")]
    cpu: dict[str, list[float]] = {"arrays (baseline)": [], "one jsonb (records)": []}
    with harness.services() as svc, psycopg.connect(svc.admin_dsn, autocommit=True) as conn:
        for _ in range(args.rounds):
            for form in cpu:
                t = time.thread_time()
                if form.startswith("arrays"):
                    params = [[Jsonb(r[c]) if c == "payload" else r[c] for r in rows] for c in names]
                    got = conn.execute(ARRAYS, params).fetchone()
                else:
                    got = conn.execute(RECORDS, [records(rows)]).fetchone()
                cpu[form].append((time.thread_time() - t) * 1000)
                assert got is not None and got[0] == args.rows, (form, got)
    print(f"{harness.machine()}\n{args.rows} rows x {len(names)} columns, {args.rounds} rounds, "
          "CPU of the calling thread per statement (median, min-max):")
    med = {form: statistics.median(v) for form, v in cpu.items()}
    for form, v in cpu.items():
        print(f"  {form:22} {med[form]:6.2f} ms  ({min(v):.2f}-{max(v):.2f})")
    base = med["arrays (baseline)"]
    print(f"  ratio one jsonb / arrays: {med['one jsonb (records)'] / base:.2f} ({base / med['one jsonb (records)']:.1f}x less)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
