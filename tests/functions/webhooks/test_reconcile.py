"""Reconciliation never starves: deliveries that wait for an account that never comes are
retried up to their limit, but a full batch of them never holds back a newer one."""

from __future__ import annotations

import uuid

from tests.factories import create_user
from tests.functions.webhooks.conftest import Hooks, rc


async def test_a_full_batch_of_hopeless_deliveries_does_not_hold_back_a_newer_one(hooks: Hooks,
                                                                                 database_url: str) -> None:
    from functions.webhooks.reconcile import reconcile

    hopeless = [(await hooks.revenuecat(rc("INITIAL_PURCHASE", str(uuid.uuid4())))).json()["data"] for _ in range(3)]
    assert {h["outcome"] for h in hopeless} == {"pending"}
    user = str(uuid.uuid4())
    newer = (await hooks.revenuecat(rc("INITIAL_PURCHASE", user))).json()["data"]
    assert newer["outcome"] == "pending"
    await create_user(database_url, user_id=user)
    # a batch smaller than what waits (200 in production, against thousands): the newest
    # of the least tried goes first
    await reconcile(hooks.services, limit=1)
    assert (await hooks.delivery(newer["delivery_id"]))["outcome"] == "applied"
    # and each hopeless one is still tried in turn, fewest attempts first
    for _ in range(3):
        await reconcile(hooks.services, limit=1)
    tried = [(await hooks.delivery(h["delivery_id"]))["attempts"] for h in hopeless]
    assert tried == [2, 2, 2], tried
