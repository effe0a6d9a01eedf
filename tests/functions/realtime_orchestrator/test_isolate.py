"""Splitting a refused batch (`isolate.py`), against a provider that behaves like Realtime: a
batch with any invalid message is refused whole (422) with the reasons, any other batch is
accepted, and it may start throttling at any request."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from functions.realtime_orchestrator.isolate import isolate
from functions.realtime_orchestrator.providers import Result


class Provider:
    def __init__(self, bad: set[int], throttle_from: int | None = None) -> None:
        self.bad = bad
        self.throttle_from = throttle_from
        self.requests = 0
        self.accepted: Counter[int] = Counter()

    async def send(self, part: Sequence[int]) -> Result:
        self.requests += 1
        if self.throttle_from is not None and self.requests >= self.throttle_from:
            return Result("throttled", 429, "realtime: rate limited")
        if any(i in self.bad for i in part):
            return Result("invalid", 422, "realtime: payload: Payload size exceeds tenant limit")
        self.accepted.update(part)
        return Result("sent", 202)


@given(n=st.integers(1, 120), data=st.data())
async def test_each_refused_message_ends_alone_and_every_other_goes_once(n: int, data: st.DataObject) -> None:
    bad = set(data.draw(st.lists(st.integers(0, n - 1), max_size=4)))
    provider = Provider(bad)
    decided = await isolate(list(range(n)), provider.send)
    assert [i for i, _ in decided] == list(range(n))  # every message decided, in order
    for i, res in decided:
        if i in bad:
            assert res.outcome == "dead" and res.status_code == 422
            assert "Payload size exceeds tenant limit" in (res.error or "")
        else:
            assert res.outcome == "sent"
    assert set(provider.accepted) == set(range(n)) - bad and max(provider.accepted.values(), default=1) == 1
    # one request if all is well; about 2 log2(n) more per refused message
    assert provider.requests <= 1 + len(bad) * 2 * max(1, n.bit_length())


@given(n=st.integers(2, 80), bad=st.integers(0, 79), throttle_from=st.integers(2, 12))
async def test_a_throttle_mid_split_stops_it_and_hands_the_rest_back_untried(n: int, bad: int, throttle_from: int) -> None:
    provider = Provider({bad % n}, throttle_from)
    decided = await isolate(list(range(n)), provider.send)
    assert [i for i, _ in decided] == list(range(n))
    outcomes = [res.outcome for _, res in decided]
    throttled = [i for i, res in decided if res.outcome == "throttled"]
    # once throttled, nothing is sent: the parts after it are released untried
    after = outcomes[outcomes.index("throttled") + 1:] if throttled else []
    assert set(after) <= {"released", "throttled"}
    assert sum(provider.accepted.values()) == outcomes.count("sent")
    assert max(provider.accepted.values(), default=1) == 1
