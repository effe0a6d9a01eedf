"""A one-route function used by multi-process tests: configured entirely from the
environment, like a deployed function."""

from __future__ import annotations

import os
from typing import Any

from shared.app import FunctionApp
from shared.context import RequestContext
from shared.ratelimit import RateRule
from shared.settings import CoreSettings

fn = FunctionApp("limited", settings=CoreSettings)
RULE = RateRule(name=os.environ.get("TEST_RULE_NAME", "limited"), limits={"free": int(os.environ.get("TEST_LIMIT", "100"))})


@fn.get("/hit", auth="required", rate=RULE, redis_failure="closed")
async def hit(ctx: RequestContext) -> Any:
    return {"ok": True}


app = fn
