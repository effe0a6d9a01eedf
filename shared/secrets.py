"""Secrets read at run time from the secret store, so the template and the function's
configuration never hold them.

`EDGEFN_SECRETS=aws-secretsmanager:<secret id>` names one AWS Secrets Manager secret whose
value is a JSON object of setting names to values (`{"DATABASE_URL": "...", ...}`;
`database-url` spells the same key). It is read once per process, at init (the first
settings load), and kept: a rotated value reaches the instances started after it
(infra/README.md, "Rotating secrets").

Where from, on Lambda:
1. the AWS Parameters and Secrets Lambda Extension on localhost, when its layer is attached
   (`PARAMETERS_SECRETS_EXTENSION_HTTP_PORT` set): a cached read, no SDK import. Lambda
   starts our init before the extension is ready to serve, so a "not ready" answer is
   retried for up to `EXTENSION_WAIT_S`;
2. otherwise, or when the extension still cannot answer, GetSecretValue through boto3
   (the Lambda runtime has it; imported only here).

On Cloud Run the service manifest maps Secret Manager versions to environment variables,
so nothing is fetched here. `shared.settings` reads the environment first, then these
values, then the defaults.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

SCHEME = "aws-secretsmanager:"
#: how long init waits for the extension to start serving before asking the API directly
EXTENSION_WAIT_S = 2.0
_lock = threading.Lock()
_cache: dict[str, dict[str, str]] = {}


class SecretsError(RuntimeError):
    """The secret store could not be read; the message names the secret, never a value."""


def values(env: Mapping[str, str]) -> dict[str, str]:
    """The setting values the store holds for `env['EDGEFN_SECRETS']` ({} when unset),
    fetched on the first call and kept for the process."""
    reference = env.get("EDGEFN_SECRETS", "")
    if not reference:
        return {}
    with _lock:
        if reference not in _cache:
            _cache[reference] = _fetch(reference, env)
        return _cache[reference]


def clear() -> None:
    """Forget fetched values (tests; a process that must re-read after a rotation)."""
    with _lock:
        _cache.clear()


def _fetch(reference: str, env: Mapping[str, str]) -> dict[str, str]:
    if not reference.startswith(SCHEME):
        raise SecretsError(f"EDGEFN_SECRETS must look like {SCHEME}<secret id>, got {reference.split(':')[0]!r}")
    secret_id = reference[len(SCHEME):]
    text = None
    if env.get("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"):
        text = _from_extension(secret_id, env)
    if text is None:
        text = _from_api(secret_id, env)
    try:
        data = json.loads(text)
    except ValueError:
        raise SecretsError(f"secret {secret_id!r} is not a JSON object") from None
    if not isinstance(data, dict):
        raise SecretsError(f"secret {secret_id!r} is not a JSON object")
    return {str(k).upper().replace("-", "_"): str(v) for k, v in data.items() if v is not None}


def _from_extension(secret_id: str, env: Mapping[str, str]) -> str | None:
    """SecretString through the extension, or None when it does not become ready in time
    (the caller then asks the API). Refusals (no such secret, no permission) raise."""
    import urllib.error
    import urllib.parse
    import urllib.request

    port = env["PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"]
    url = f"http://localhost:{port}/secretsmanager/get?" + urllib.parse.urlencode({"secretId": secret_id})
    request = urllib.request.Request(url, headers={"X-Aws-Parameters-Secrets-Token": env.get("AWS_SESSION_TOKEN", "")})
    deadline = time.monotonic() + EXTENSION_WAIT_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=1.0) as resp:  # noqa: S310 - localhost only
                body: dict[str, Any] = json.loads(resp.read())
                return str(body["SecretString"])
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            if exc.code not in (400, 503) or "not ready" not in detail.lower():
                raise SecretsError(f"the secrets extension refused {secret_id!r}: {exc.code} {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _from_api(secret_id: str, env: Mapping[str, str]) -> str:
    import boto3  # lazy: the Lambda runtime's, ~150 ms to import, only without the extension
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "secretsmanager", region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        config=Config(connect_timeout=2, read_timeout=3, retries={"max_attempts": 2}),
    )
    try:
        return str(client.get_secret_value(SecretId=secret_id)["SecretString"])
    except (BotoCoreError, ClientError) as exc:
        raise SecretsError(f"cannot read secret {secret_id!r}: {exc}") from None


def environment() -> Mapping[str, str]:
    """The environment, completed by the secret store: what `Settings.load` reads."""
    return {**values(os.environ), **os.environ}
