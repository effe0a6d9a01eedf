"""Find the messages a provider refuses in a batch, and deliver the rest.

Realtime validates a whole broadcast batch before sending any of it (batch_broadcast.ex:
one invalid message, an oversized payload say, makes the batch a 422). So a refused batch is
split in halves and each half sent again, recursively: the good messages go out in the
halves that pass, and each refused message ends alone with the provider's reason, after at
most about 2 log2(n) requests per bad message. Any other answer (sent, throttled, a
failure) applies to the whole part that got it; once one says stop, the parts not yet
sent are handed back untried.

    outcomes = await isolate(rows, lambda part: realtime.send(messages(part)))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from functions.realtime_orchestrator.providers import Result

T = TypeVar("T")


async def isolate(items: Sequence[T], send: Callable[[Sequence[T]], Awaitable[Result]]) -> list[tuple[T, Result]]:
    """Each item with the answer that decides it, in the items' order."""
    out: list[tuple[T, Result]] = []
    stop: Result | None = None
    todo: list[Sequence[T]] = [items]
    while todo:
        part = todo.pop(0)
        if stop is not None:
            out += [(item, Result("released", error="not sent: an earlier part was refused", retry_after=stop.retry_after))
                    for item in part]
            continue
        res = await send(part)
        if res.outcome != "invalid":
            out += [(item, res) for item in part]
            if res.outcome != "sent":
                stop = res
        elif len(part) == 1:
            out.append((part[0], Result("dead", res.status_code, f"refused alone: {res.error}", duration_ms=res.duration_ms)))
        else:
            mid = len(part) // 2
            todo[:0] = [part[:mid], part[mid:]]
    return out
