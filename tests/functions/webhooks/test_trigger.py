"""`edgefn webhooks trigger` (edgefn/webhooks_trigger.py) against a running `edgefn dev`: every
event of both providers' lifecycles, signed with the secrets the server printed, applies."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from edgefn.cli import main
from edgefn.webhooks_trigger import EVENTS
from tests.devserver import REPO, DevServer, clean_env, edgefn_cmd, start_dev

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="`edgefn dev` is tested on Linux")

#: the issue's lifecycles; every one of them can be triggered
PAYSTACK = ("charge.success", "subscription.create", "invoice.payment_failed", "invoice.update",
            "subscription.not_renew", "refund.processed", "subscription.disable")
REVENUECAT = ("TEST", "INITIAL_PURCHASE", "PRODUCT_CHANGE", "RENEWAL", "CANCELLATION", "UNCANCELLATION",
              "BILLING_ISSUE", "EXPIRATION", "TRANSFER")
CASES = [("paystack", e) for e in PAYSTACK] + [("revenuecat", e) for e in REVENUECAT]


def seeded_user(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with start_dev(tmp_path_factory.mktemp("trigger")) as server:
        yield server


def trigger(capsys: pytest.CaptureFixture[str], dev: DevServer, *args: str) -> list[dict[str, object]]:
    assert main(["webhooks", "trigger", *args, "--data-dir", str(dev.data_dir), "--json"]) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def dsn(dev: DevServer) -> str:
    return str(json.loads((dev.data_dir / "dev.json").read_text())["database_url"])


def test_the_lifecycles_are_all_triggerable() -> None:
    assert set(PAYSTACK) <= set(EVENTS["paystack"]) and set(REVENUECAT) <= set(EVENTS["revenuecat"])


@pytest.mark.parametrize(("provider", "event"), CASES, ids=[f"{p}-{e}" for p, e in CASES])
def test_every_event_applies_when_fresh(dev: DevServer, capsys: pytest.CaptureFixture[str], provider: str,
                                        event: str) -> None:
    user = seeded_user(100 + CASES.index((provider, event)))  # each case its own seeded user
    sent = trigger(capsys, dev, provider, event, "--user", user, "--to", seeded_user(200))
    *setup, last = sent
    assert last["event"] == event and last["status"] == 200 and last["duplicate"] is False
    # TEST is recorded and acted on by nobody: the one event whose fresh answer is `ignored`
    assert last["outcome"] == ("ignored" if event == "TEST" else "applied"), sent
    assert all(s["outcome"] == "applied" and s["setup"] for s in setup), sent
    with psycopg.connect(dsn(dev)) as conn:
        stored = conn.execute("select provider, event_type from public.webhook_deliveries where id = %s",
                              (last["delivery_id"],)).fetchone()
        tier = conn.execute("select tier from public.user_tiers where user_id = %s", (user,)).fetchone()
    assert stored == (provider, event)
    if (provider, event) in {("paystack", "charge.success"), ("paystack", "invoice.update"),
                             ("revenuecat", "INITIAL_PURCHASE"), ("revenuecat", "RENEWAL")}:
        assert tier == ("paid",)  # the demo plans are registered: the payment is the plan's price
    if (provider, event) in {("paystack", "refund.processed"), ("revenuecat", "EXPIRATION"),
                             ("revenuecat", "TRANSFER")}:
        assert tier == ("free",)  # refunded, expired, moved away


def test_as_a_user_runs_it_and_a_wrong_secret_is_one_line(dev: DevServer) -> None:
    ok = subprocess.run(edgefn_cmd("webhooks", "trigger", "paystack", "refund.processed", "--data-dir", str(dev.data_dir)),
                        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].startswith("setup paystack charge.success: applied (delivery ")
    assert lines[-1].startswith("paystack refund.processed: applied (delivery ")
    bad = subprocess.run(edgefn_cmd("webhooks", "trigger", "revenuecat", "RENEWAL", "--data-dir", str(dev.data_dir)),
                         cwd=REPO, env=clean_env(REVENUECAT_WEBHOOK_AUTH="Bearer wrong"), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith("answered 401 to revenuecat INITIAL_PURCHASE: the secret does not match the server's")
    assert any(line.startswith("edgefn webhooks trigger paystack charge.success --data-dir ") for line in dev.lines)


def test_unknown_event_and_no_server_are_one_line(tmp_path: object, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYSTACK_SECRET_KEY", raising=False)
    assert main(["webhooks", "trigger", "paystack", "charge.refunded", "--data-dir", str(tmp_path)]) == 1
    assert "unknown paystack event 'charge.refunded': one of charge.success" in capsys.readouterr().err
    assert main(["webhooks", "trigger", "paystack", "charge.success", "--data-dir", str(tmp_path)]) == 1
    assert "no PAYSTACK_SECRET_KEY" in capsys.readouterr().err


def test_an_event_not_applied_says_why(dev: DevServer, capsys: pytest.CaptureFixture[str]) -> None:
    """The provider's answer carries only the outcome; the command adds the reason the server
    stored, so a user who triggers for a plan nobody registered, or a user who does not
    exist, sees what to fix."""
    (flagged,) = trigger(capsys, dev, "paystack", "charge.success", "--user", seeded_user(300),
                         "--plan-code", "PLN_not_registered")
    assert flagged["outcome"] == "flagged" and "PLN_not_registered" in str(flagged["reason"]), flagged
    nobody = "00000000-0000-4000-8000-00000000dead"
    (pending,) = trigger(capsys, dev, "paystack", "charge.success", "--user", nobody)
    assert pending["outcome"] == "pending" and nobody in str(pending["reason"]), pending
    (applied,) = trigger(capsys, dev, "paystack", "charge.success", "--user", seeded_user(301))
    assert applied["outcome"] == "applied" and applied["reason"] is None, applied


def test_a_server_elsewhere_needs_allow_remote(tmp_path: object, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed with real secrets (from the environment), a trigger grants real tiers: it goes
    to another machine only when asked to, and then sends nothing without a server there."""
    monkeypatch.setenv("PAYSTACK_SECRET_KEY", "sk_live_not_for_this")
    args = ["webhooks", "trigger", "paystack", "charge.success", "--data-dir", str(tmp_path),
            "--url", "https://api.example.com"]
    assert main(args) == 1
    assert "is not on this machine" in capsys.readouterr().err
    assert main([*args[:-1], "http://127.0.0.1:9", "--json"]) == 1  # loopback: allowed, nothing listening
    assert "cannot reach" in capsys.readouterr().err
