"""`edgefn webhooks replay` (edgefn/webhooks_cli.py), run as the operator would."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgefn import webhooks_cli
from edgefn.cli import CommandError
from tests.conftest import KEY_PREFIX
from tests.factories import create_user
from tests.functions.webhooks.conftest import Hooks, rc


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    webhooks_cli.add_arguments(p)
    return p.parse_args(list(argv))


async def cli(monkeypatch: pytest.MonkeyPatch, redis_url: str, *argv: str) -> int:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("KEY_PREFIX", KEY_PREFIX)
    monkeypatch.setenv("REDIS_TIMEOUT_MS", "500")
    return await asyncio.to_thread(webhooks_cli.run, parse(*argv))


async def test_replay_after_a_fix_and_pending(hooks: Hooks, database_url: str, redis_url: str,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from functions.webhooks import revenuecat

    user = await create_user(database_url)
    monkeypatch.setattr(revenuecat, "_event", lambda *a, **k: 1 / 0)
    ack = (await hooks.revenuecat(rc("INITIAL_PURCHASE", user))).json()["data"]
    assert ack["outcome"] == "failed"
    monkeypatch.undo()

    assert await cli(monkeypatch, redis_url, "replay", "--since", "10m", "--outcome", "failed", "--dry-run",
                     "--database-url", database_url) == 0
    out = capsys.readouterr().out
    assert f"#{ack['delivery_id']} revenuecat INITIAL_PURCHASE" in out and "(dry run)" in out
    assert (await hooks.delivery(ack["delivery_id"]))["outcome"] == "failed"

    assert await cli(monkeypatch, redis_url, "replay", "--since", "10m", "--provider", "revenuecat",
                     "--database-url", database_url, "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["outcomes"]["applied"] >= 1 and summary["errors"] == 0
    assert (await hooks.delivery(ack["delivery_id"]))["outcome"] == "applied"
    assert await hooks.tier(user) == "paid" and await hooks.redis_tier(user) == "paid"

    assert await cli(monkeypatch, redis_url, "replay", "--pending", "--database-url", database_url, "--json") == 0
    assert "tiers_pushed" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_when_parses_iso_and_durations() -> None:
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert webhooks_cli.parse_when("2h", now=now) == now - timedelta(hours=2)
    assert webhooks_cli.parse_when("7d", now=now) == now - timedelta(days=7)
    assert webhooks_cli.parse_when("2026-04-30T00:00Z") == datetime(2026, 4, 30, tzinfo=UTC)
    assert webhooks_cli.parse_when("2026-04-30") == datetime(2026, 4, 30, tzinfo=UTC)
    with pytest.raises(CommandError):
        webhooks_cli.parse_when("yesterday")


@pytest.mark.parametrize("argv", [("replay",), ("replay", "--since", "2h", "--outcome", "eaten"), ()])
def test_usage_errors_are_one_line(argv: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x")
    with pytest.raises(CommandError):
        webhooks_cli.run(parse(*argv))


def test_unreachable_database_is_a_command_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(CommandError, match="DATABASE"):
        webhooks_cli.run(parse("replay", "--since", "1h", "--database-url", f"postgresql://postgres@127.0.0.1:{port}/x"))
