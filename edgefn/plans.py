"""`edgefn plans`: register an app's subscription plans from a file, not by hand-written SQL.

    edgefn plans sync plans.toml                  # upsert every plan in the file (DATABASE_URL)
    edgefn plans sync plans.toml --dry-run        # say what would change, change nothing
    edgefn plans sync plans.toml --deactivate-missing   # also retire plans the file no longer has
    edgefn plans list                             # what the database holds

The file (TOML) holds one `[[plan]]` table per plan:

    [[plan]]
    code = "pro_monthly"                 # our name for it (subscriptions.plan_code)
    provider = "paystack"                # or "revenuecat" (default paystack)
    provider_plan_code = "PLN_gx2wn530m0i3w3m"   # Paystack's plan code, or the store product id
    amount = 200000                      # the price in the currency's minor unit (kobo, cents)
    currency = "NGN"
    interval = "monthly"                 # daily, weekly, monthly, quarterly, biannually, annually
    tier = "paid"                        # free or paid: what an active subscription grants
    active = true                        # optional (default true)

A payment is checked against this row: a Paystack charge whose amount or currency differs
from the plan's is `flagged` and grants nothing, so `amount` must be exactly what Paystack
charges (the `amount` of its plan). Syncing is an idempotent upsert by `code`: running it
twice changes nothing the second time. Every problem in the file is reported at once, each
naming the plan and the key, and nothing is written while any remains.

The database is `--database-url`, else `DATABASE_URL`, else that of the `edgefn dev`
running in `--data-dir` (which registers the demo plans, `DEMO_PLANS`, on every start).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefn.cli import CommandError

PROVIDERS = ("paystack", "revenuecat")
#: what a plan may grant: never admin, which is given by hand and which nothing a payment
#: does (a refund, an expiry) ever takes back
TIERS = ("free", "paid")
#: Paystack's plan intervals the database accepts (migration 0022) and
#: functions.webhooks.state.add_interval knows; `yearly` is 0006's name for `annually`
INTERVALS = ("daily", "weekly", "monthly", "quarterly", "biannually", "annually", "yearly")
KEYS = ("code", "provider", "provider_plan_code", "amount", "currency", "interval", "tier", "active")
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")

#: The plans `edgefn dev` registers, and what `edgefn webhooks trigger` pays for: Paystack's
#: pro plan as the original app priced it (NGN 2,000 a month, NGN 20,000 a year; the codes
#: 0006 created, now with Paystack plan codes) and a RevenueCat store product.
DEMO_PLANS = """
[[plan]]
code = "pro_monthly"
provider = "paystack"
provider_plan_code = "PLN_demo_pro_monthly"
amount = 200000
currency = "NGN"
interval = "monthly"
tier = "paid"

[[plan]]
code = "pro_yearly"
provider = "paystack"
provider_plan_code = "PLN_demo_pro_yearly"
amount = 2000000
currency = "NGN"
interval = "annually"
tier = "paid"

[[plan]]
code = "pro_monthly_ios"
provider = "revenuecat"
provider_plan_code = "com.edgefn.demo.pro_monthly"
amount = 499
currency = "USD"
interval = "monthly"
tier = "paid"
"""


class PlanFileError(CommandError):
    """The plans file cannot be synced; the message lists every problem, one a line."""


@dataclass(frozen=True, slots=True)
class PlanSpec:
    code: str
    provider: str
    provider_plan_code: str | None
    amount: int
    currency: str
    interval: str
    tier: str
    active: bool = True

    def row(self) -> tuple[Any, ...]:
        return (self.code, self.provider, self.tier, self.amount, self.currency, self.interval,
                self.provider_plan_code, self.active)


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"created={len(self.created)} updated={len(self.updated)} unchanged={len(self.unchanged)} "
                f"deactivated={len(self.deactivated)}")


# -- reading and checking a file -------------------------------------------------------------


def parse(text: str, *, source: str = "plans") -> list[PlanSpec]:
    """Every plan in a TOML text; `PlanFileError` lists every problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanFileError(f"{source}: not valid TOML: {exc}") from None
    unknown_top = sorted(set(doc) - {"plan"})
    problems = [f"{source}: unknown top-level key {k!r} (plans go in [[plan]] tables)" for k in unknown_top]
    tables = doc.get("plan", [])
    if not isinstance(tables, list) or not tables:
        problems.append(f"{source}: no plans: add one [[plan]] table per plan")
        raise PlanFileError("\n".join(problems))
    plans: list[PlanSpec] = []
    seen: dict[str, int] = {}
    seen_provider_codes: dict[str, int] = {}
    for i, table in enumerate(tables, 1):
        where = f"{source}: plan {i}" + (f" ({table.get('code')})" if isinstance(table.get("code"), str) else "")
        spec, errs = _check(table, where)
        problems += errs
        if spec is None:
            continue
        if spec.code in seen:
            problems.append(f"{where}: code {spec.code!r} is also plan {seen[spec.code]}'s")
        seen.setdefault(spec.code, i)
        if spec.provider_plan_code:
            other = seen_provider_codes.setdefault(spec.provider_plan_code, i)
            if other != i:
                problems.append(f"{where}: provider_plan_code {spec.provider_plan_code!r} is also plan {other}'s")
        plans.append(spec)
    if problems:
        raise PlanFileError("\n".join(problems))
    return plans


def _check(t: Any, where: str) -> tuple[PlanSpec | None, list[str]]:
    if not isinstance(t, dict):
        return None, [f"{where}: a plan is a [[plan]] table"]
    errs = [f"{where}: unknown key {k!r} (keys: {', '.join(KEYS)})" for k in t if k not in KEYS]
    code = t.get("code")
    if not isinstance(code, str) or not _CODE.match(code):
        errs.append(f"{where}: code must be a name of letters, digits and _ . : - (at most 100), got {_got(code)}")
    provider = t.get("provider", "paystack")
    if provider not in PROVIDERS:
        errs.append(f"{where}: provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    ppc = t.get("provider_plan_code")
    if ppc is not None and (not isinstance(ppc, str) or not ppc.strip()):
        errs.append(f"{where}: provider_plan_code must be a non-empty string (Paystack's PLN_... code), got {ppc!r}")
    elif provider == "paystack" and ppc is not None and not ppc.startswith("PLN_"):
        errs.append(f"{where}: provider_plan_code of a Paystack plan starts with PLN_, got {ppc!r}")
    elif provider == "paystack" and ppc is None:
        errs.append(f"{where}: provider_plan_code is required for a Paystack plan (its PLN_... code: charges name it)")
    amount = t.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        hint = " (in the minor unit: NGN 2,000 is 200000 kobo)" if isinstance(amount, (float, str)) else ""
        errs.append(f"{where}: amount must be a whole number >= 0 of the currency's minor unit{hint}, got {_got(amount)}")
    currency = t.get("currency")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        errs.append(f"{where}: currency must be a three-letter ISO 4217 code in capitals (NGN, USD), got {_got(currency)}")
    interval = t.get("interval")
    if interval not in INTERVALS:
        extra = " (Paystack's hourly plans are for its tests: a period of an hour is no tier)" if interval == "hourly" else ""
        errs.append(f"{where}: interval must be one of {', '.join(INTERVALS)}{extra}, got {_got(interval)}")
    tier = t.get("tier")
    if tier not in TIERS:
        errs.append(f"{where}: tier must be one of {', '.join(TIERS)}, got {_got(tier)}")
    active = t.get("active", True)
    if not isinstance(active, bool):
        errs.append(f"{where}: active must be true or false, got {active!r}")
    if errs:
        return None, errs
    return PlanSpec(code, provider, ppc, amount, currency, interval, tier, active), []


def _got(value: Any) -> str:
    return "nothing (the key is missing)" if value is None else repr(value)


def load(path: str | Path) -> list[PlanSpec]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PlanFileError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse(text, source=str(p))


# -- writing them ------------------------------------------------------------------------------

_COLUMNS = "code, provider, tier, amount_minor, currency, interval, provider_plan_code, active"


def sync(dsn: str, plans: list[PlanSpec], *, dry_run: bool = False, deactivate_missing: bool = False) -> SyncReport:
    """Upsert `plans` by code in one transaction; with `deactivate_missing`, mark every other
    plan of the file's providers inactive (subscriptions keep their rows; a plan is never
    deleted, since stored subscriptions and deliveries name it)."""
    import psycopg

    report = SyncReport()
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
            conn.execute("lock table public.subscription_plans in share row exclusive mode")
            current = {r[0]: r for r in conn.execute(f"select {_COLUMNS} from public.subscription_plans").fetchall()}
            for plan in plans:
                row = current.get(plan.code)
                if row is None:
                    report.created.append(plan.code)
                elif _same(row, plan):
                    report.unchanged.append(plan.code)
                    continue
                else:
                    report.updated.append(plan.code)
                if not dry_run:
                    conn.execute(
                        f"insert into public.subscription_plans ({_COLUMNS}) values (%s, %s, %s, %s, %s, %s, %s, %s) "
                        "on conflict (code) do update set provider = excluded.provider, tier = excluded.tier, "
                        "amount_minor = excluded.amount_minor, currency = excluded.currency, "
                        "interval = excluded.interval, provider_plan_code = excluded.provider_plan_code, "
                        "active = excluded.active",
                        plan.row(),
                    )
            if deactivate_missing:
                named = {p.code for p in plans}
                providers = {p.provider for p in plans}
                for code, row in sorted(current.items()):
                    if code not in named and row[1] in providers and row[7]:
                        report.deactivated.append(code)
                        if not dry_run:
                            conn.execute("update public.subscription_plans set active = false where code = %s", (code,))
            if dry_run:
                raise _Rollback()
    except _Rollback:
        pass
    except psycopg.errors.UniqueViolation as exc:
        raise PlanFileError(f"a provider_plan_code in the file already belongs to another plan: {_first_line(exc)}") from None
    except psycopg.errors.CheckViolation as exc:
        raise PlanFileError(f"the database refused a plan: {_first_line(exc)} (is `edgefn migrate` current?)") from None
    except psycopg.errors.UndefinedTable:
        raise PlanFileError("public.subscription_plans does not exist: run `edgefn migrate` first") from None
    except psycopg.OperationalError as exc:
        raise CommandError(f"cannot connect to the database: {_first_line(exc)}") from None
    return report


class _Rollback(Exception):
    pass


def _same(row: tuple[Any, ...], plan: PlanSpec) -> bool:
    code, provider, tier, amount, currency, interval, ppc, active = row
    return (provider, tier, int(amount), currency.strip(), interval, ppc, active) == (
        plan.provider, plan.tier, plan.amount, plan.currency, plan.interval, plan.provider_plan_code, plan.active)


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n", 1)[0].split()) or type(exc).__name__


def sync_demo(dsn: str) -> SyncReport:
    """What `edgefn dev` runs on start: the demo plans, upserted (a no-op once they are there)."""
    return sync(dsn, parse(DEMO_PLANS, source="demo plans"))


# -- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("sync", help="upsert the plans of a TOML file (idempotent)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the plans file (TOML, one [[plan]] table per plan)")
    p.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    p.add_argument("--deactivate-missing", action="store_true",
                   help="mark plans of the file's providers that the file does not name inactive")
    _database_arguments(p)
    ls = sub.add_parser("list", help="the plans the database holds")
    _database_arguments(ls)


def _database_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", default=None,
                   help="Postgres DSN (default: DATABASE_URL, else the database of the `edgefn dev` running in --data-dir)")
    p.add_argument("--data-dir", default=".edgefn", help="the data folder of a running `edgefn dev` (default .edgefn)")


def run(args: argparse.Namespace) -> int:
    from edgefn.devstate import database_url

    action = getattr(args, "action", None)
    if action not in ("sync", "list"):
        raise CommandError("say what to do: edgefn plans sync plans.toml (or edgefn plans list)")
    if action == "sync":
        plans = load(args.file)  # a bad file fails before any connection
        report = sync(database_url(args.database_url, args.data_dir), plans, dry_run=args.dry_run,
                      deactivate_missing=args.deactivate_missing)
        for verb, codes in (("created", report.created), ("updated", report.updated),
                            ("deactivated", report.deactivated)):
            for code in codes:
                print(f"{'would be ' if args.dry_run else ''}{verb} {code}")
        print(("dry run: " if args.dry_run else "") + report.summary())
        return 0
    for line in listing(database_url(args.database_url, args.data_dir)):
        print(line)
    return 0


def listing(dsn: str) -> list[str]:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            rows = conn.execute(f"select {_COLUMNS} from public.subscription_plans order by provider, code").fetchall()
    except psycopg.OperationalError as exc:
        raise CommandError(f"cannot connect to the database: {_first_line(exc)}") from None
    out = []
    for code, provider, tier, amount, currency, interval, ppc, active in rows:
        out.append(f"{code}  {provider}  {ppc or '-'}  {amount} {currency.strip()}  {interval}  {tier}"
                   + ("" if active else "  (inactive)"))
    return out
