"""The inline upload through the Lambda entry point: a Function URL event whose multipart
body is base64 (as Lambda delivers binary bodies), through Mangum, to R2 and Postgres."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from types import SimpleNamespace
from typing import Any

import psycopg

from tests.conftest import load_event
from tests.functions.upload_media import samples as smp
from tests.functions.upload_media.conftest import objects


def test_an_inline_upload_through_the_lambda_handler(base_env: dict[str, Any], make_token: Any, s3: Any, database_url: str) -> None:
    import uuid

    from functions.upload_media.handler import fn
    from functions.upload_media.settings import UploadMediaSettings
    from shared.services import Services

    uid = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("insert into auth.users (id, email) values (%s, %s)", (uid, f"{uid}@example.com"))
    settings = UploadMediaSettings.load(env={}, **base_env)
    services = Services(settings)
    fn.configure(settings=settings, services=services)
    data = smp.sized(smp.WEBP, 40_000)
    body = smp.form(data, bucket="products", filename="shoe.webp", ctype="image/webp")
    event = load_event("function_url_get_health.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/functions/v1/upload-media"
    event["requestContext"]["http"]["method"] = "POST"
    event["headers"].update({
        "authorization": f"Bearer {make_token(uid)}", "content-type": smp.CONTENT_TYPE, "content-length": str(len(body)),
    })  # fmt: skip
    event["body"] = base64.b64encode(body).decode()
    event["isBase64Encoded"] = True
    # in a thread of its own with its own event loop, as a Lambda process has (the test
    # session's loop is left alone)
    out: dict[str, Any] = {}

    def invoke() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            out["result"] = fn.lambda_handler(event, SimpleNamespace(function_name="upload-media", aws_request_id="req-1"))
        finally:
            loop.run_until_complete(services.aclose())
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=invoke)
    thread.start()
    thread.join(30)
    result = out["result"]
    assert result["statusCode"] == 201, result["body"]
    key = json.loads(result["body"])["data"]["key"]
    assert key.startswith(f"products/{uid}/") and key.endswith(".webp")
    assert asyncio.run(objects(s3, key)) == {key: len(data)}
