"""The deployable functions. Each folder is one function: a thin `handler.py` (ASGI `app`
and Lambda `handler`), its settings and its logic. This module stays import-free."""

#: route name -> handler module
FUNCTIONS: dict[str, str] = {
    "upload-media": "functions.upload_media.handler",
    "optimized-dashboard": "functions.optimized_dashboard.handler",
    "batch-swipe": "functions.batch_swipe.handler",
    "recommendations": "functions.recommendations.handler",
    "realtime-orchestrator": "functions.realtime_orchestrator.handler",
    "webhooks": "functions.webhooks.handler",
}
