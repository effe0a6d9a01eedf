"""`edgefn outbox status` shows dead letters; `edgefn outbox requeue` gives them another go."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import pytest

from edgefn import outbox_cli
from edgefn.cli import CommandError
from tests.factories import create_user
from tests.functions.realtime_orchestrator.conftest import FakeClock, add_device, deliveries, enqueue
from tests.functions.realtime_orchestrator.fakes import ProviderFake


async def run(*argv: str) -> int:
    """The command, run in a thread as a user runs it: its own blocking connection, off the loop."""
    parser = argparse.ArgumentParser(prog="edgefn outbox")
    outbox_cli.add_arguments(parser)
    return await asyncio.to_thread(outbox_cli.run, parser.parse_args(list(argv)))


async def test_dead_letters_are_visible_and_can_be_requeued(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    u = await create_user(database_url)
    _, token = await add_device(database_url, u, "fcm")
    event_id = await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    fake.mode["fcm"] = "fail"
    orch = make_orchestrator(max_attempts=1)
    await orch.drain(budget=5)
    push = next(r for r in await deliveries(database_url, event_id) if r["channel"] == "push")
    assert push["status"] == "dead"

    assert await run("status", "--database-url", database_url) == 0
    text = capsys.readouterr().out
    assert f"#{push['id']} push message.received" in text and "after 1 attempts: fcm: INTERNAL" in text
    assert await run("status", "--database-url", database_url, "--json", "--dead", "500") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["deliveries"]["push"]["dead"] >= 1
    assert push["id"] in [d["id"] for d in status["dead_letters"]]

    # the provider is fixed: requeue, drain, delivered once
    fake.mode["fcm"] = "ok"
    assert await run("requeue", "--database-url", database_url, "--id", str(push["id"])) == 0
    assert "requeued 1 dead delivery" in capsys.readouterr().out
    clock.advance(1)
    await orch.drain(budget=5)
    assert len([p for p in fake.pushes() if p["token"] == token]) == 1
    assert next(r for r in await deliveries(database_url, event_id) if r["channel"] == "push")["status"] == "sent"
    assert await run("requeue", "--database-url", database_url, "--id", str(push["id"])) == 0  # sent: untouched
    assert "requeued 0" in capsys.readouterr().out


async def test_cli_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(CommandError, match="DATABASE_URL is not set"):
        await run("status")
    with pytest.raises(CommandError, match="say what"):
        await run()
    with pytest.raises(CommandError, match="not a valid Postgres"):
        await run("status", "--database-url", "not a dsn ===")
