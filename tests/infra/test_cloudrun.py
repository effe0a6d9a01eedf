"""The Cloud Run manifests, held to a schema of the Cloud Run service YAML (the fields of
Google's reference that these files use, no others: a misspelt key fails) and to what a
first deploy needs: every secret the function reads as a Secret Manager reference, the
scheduler job of every schedule calling the authenticated internal route, Direct VPC
egress for Memorystore, a minimum instance, and the proxy hop count of Google's load
balancer, whose X-Forwarded-For the client-address code is run against."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from functions import FUNCTIONS
from tests.infra.test_deploy import SECRET_VALUE, serverless, settings_env_names

ROOT = Path(__file__).resolve().parents[2]

_STR = {"type": "string"}
_ENV = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
        "value": _STR,
        "valueFrom": {"type": "object", "additionalProperties": False, "required": ["secretKeyRef"], "properties": {
            "secretKeyRef": {"type": "object", "additionalProperties": False, "required": ["name", "key"], "properties": {
                "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,255}$"},
                "key": {"type": "string", "pattern": "^(latest|[0-9]+)$"}}}}},
    },
    "oneOf": [{"required": ["value"]}, {"required": ["valueFrom"]}],
}
_PROBE = {"type": "object", "additionalProperties": False, "required": ["httpGet"], "properties": {
    "httpGet": {"type": "object", "additionalProperties": False, "required": ["path"], "properties": {
        "path": {"type": "string", "pattern": "^/"}, "port": {"type": "integer"}}},
    "initialDelaySeconds": {"type": "integer", "minimum": 0, "maximum": 240},
    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 240},
    "failureThreshold": {"type": "integer", "minimum": 1},
    "timeoutSeconds": {"type": "integer", "minimum": 1}}}
_CONTAINER = {
    "type": "object", "additionalProperties": False, "required": ["image"], "properties": {
        "image": _STR,
        "ports": {"type": "array", "maxItems": 1, "items": {
            "type": "object", "additionalProperties": False,
            "properties": {"name": {"enum": ["http1", "h2c"]}, "containerPort": {"type": "integer"}}}},
        "env": {"type": "array", "items": _ENV},
        "resources": {"type": "object", "additionalProperties": False, "properties": {
            "limits": {"type": "object", "additionalProperties": False, "properties": {
                "cpu": {"type": "string", "pattern": "^[0-9]+(m)?$"},
                "memory": {"type": "string", "pattern": "^[0-9]+(Mi|Gi)$"}}}}},
        "startupProbe": _PROBE,
        "livenessProbe": _PROBE,
    },
}
_REVISION_ANNOTATIONS = {"type": "object", "additionalProperties": _STR, "properties": {
    "autoscaling.knative.dev/minScale": {"type": "string", "pattern": "^[0-9]+$"},
    "autoscaling.knative.dev/maxScale": {"type": "string", "pattern": "^[0-9]+$"},
    "run.googleapis.com/startup-cpu-boost": {"enum": ["true", "false"]},
    "run.googleapis.com/execution-environment": {"enum": ["gen1", "gen2"]},
    "run.googleapis.com/vpc-access-egress": {"enum": ["all-traffic", "private-ranges-only"]},
    "run.googleapis.com/network-interfaces": _STR,
}}
_TEMPLATE = {"type": "object", "additionalProperties": False, "required": ["spec"], "properties": {
    "metadata": {"type": "object", "additionalProperties": False, "properties": {"annotations": _REVISION_ANNOTATIONS}},
    "spec": {"type": "object", "additionalProperties": False, "required": ["containers"], "properties": {
        "serviceAccountName": _STR,
        "containerConcurrency": {"type": "integer", "minimum": 1, "maximum": 1000},
        "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 3600},
        "containers": {"type": "array", "minItems": 1, "maxItems": 1, "items": _CONTAINER},
    }},
}}
#: Cloud Run's service YAML (serving.knative.dev/v1 Service), the parts used here
SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.knative.dev/v1"},
        "kind": {"const": "Service"},
        "metadata": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$"},
            "labels": {"type": "object", "additionalProperties": _STR},
            "annotations": {"type": "object", "additionalProperties": _STR, "properties": {
                "run.googleapis.com/ingress": {"enum": ["all", "internal", "internal-and-cloud-load-balancing"]}}},
        }},
        "spec": {"type": "object", "additionalProperties": False, "required": ["template"],
                 "properties": {"template": _TEMPLATE}},
    },
}
SCHEDULER_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["jobs"], "properties": {
        "jobs": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "service", "path", "schedule", "attemptDeadline", "description"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,500}$"},
                "service": _STR,
                "path": {"type": "string", "pattern": "^/functions/v1/[a-z-]+/internal/scheduled$"},
                "schedule": {"type": "string", "pattern": r"^(\S+ ){4}\S+$"},
                "attemptDeadline": {"type": "string", "pattern": "^[0-9]+s$"},
                "description": _STR}}}}}

#: what each function cannot run without, beyond the database, Redis and Supabase
NEEDS = {
    "upload-media": {"R2_ACCOUNT_ID", "R2_BUCKET", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_PUBLIC_URL"},
    "optimized-dashboard": set(),
    "batch-swipe": set(),
    "recommendations": set(),
    "realtime-orchestrator": {"SUPABASE_SERVICE_ROLE_KEY", "ORCHESTRATOR_WEBHOOK_SECRETS", "DB_WEBHOOK_SECRET",
                              "ORCHESTRATOR_DRAIN_SECRET", "FCM_PROJECT_ID", "FCM_SERVICE_ACCOUNT_JSON",
                              "APNS_KEY_ID", "APNS_TEAM_ID", "APNS_PRIVATE_KEY", "APNS_TOPIC"},
    "webhooks": {"PAYSTACK_SECRET_KEY", "REVENUECAT_WEBHOOK_AUTH"},
}
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|PRIVATE_KEY|ACCESS_KEY|AUTH|SERVICE_ACCOUNT|DSN|DATABASE_URL|"
                         r"DATABASE_READ_URL|REDIS_URL|SERVICE_ROLE_KEY)")


def manifest(route: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "infra/cloudrun" / f"{route}.yaml").read_text())  # type: ignore[no-any-return]


def scheduled(route: str) -> bool:
    return importlib.import_module(FUNCTIONS[route]).fn._scheduled is not None


@pytest.mark.parametrize("route", sorted(FUNCTIONS))
def test_each_service_manifest_is_complete(route: str) -> None:
    doc = manifest(route)
    jsonschema.validate(doc, SERVICE_SCHEMA)
    assert doc["metadata"]["name"] == f"edgefn-{route}"
    template = doc["spec"]["template"]
    spec, annotations = template["spec"], template["metadata"]["annotations"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["EDGEFN_FUNCTION"]["value"] == FUNCTIONS[route].split(".")[1]
    assert container["startupProbe"]["httpGet"]["path"] == f"/functions/v1/{route}/health"
    unknown = set(env) - settings_env_names(route)
    assert not unknown, f"{route}: variables nothing reads: {unknown}"
    # every secret by reference; nothing secret-looking in plain values
    needed = {"DATABASE_URL", "REDIS_URL", "SUPABASE_URL"} | NEEDS[route] | ({"SCHEDULER_SECRET"} if scheduled(route) else set())
    refs = {n for n, e in env.items() if "valueFrom" in e}
    assert needed <= refs, f"{route}: missing secrets {needed - refs}"
    for name, e in env.items():
        if SECRET_NAME.search(name):
            assert name in refs, f"{route}: {name} must come from Secret Manager"
        assert not SECRET_VALUE.search(e.get("value", ""))
    # scale, egress and the front end
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert annotations["run.googleapis.com/vpc-access-egress"] == "private-ranges-only"
    assert "network" in yaml.safe_load(annotations["run.googleapis.com/network-interfaces"])[0]
    assert doc["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal-and-cloud-load-balancing"
    assert (env["TRUSTED_PROXY_HEADER"]["value"], env["TRUSTED_PROXY_HOPS"]["value"]) == ("x-forwarded-for", "2")
    assert int(env["DB_POOL_MAX"]["value"]) <= spec["containerConcurrency"]


def test_the_schema_refuses_what_cloud_run_would() -> None:
    import copy

    good = manifest("webhooks")
    for path, value in [(("spec", "template", "spec", "containerConcurency"), 80),
                        (("spec", "template", "spec", "containers", 0, "env", 0, "valueFrom"), {"secretRef": {}}),
                        (("metadata", "annotations", "run.googleapis.com/ingress"), "internal-only")]:
        doc = copy.deepcopy(good)
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, SERVICE_SCHEMA)


def test_a_scheduler_job_runs_every_schedule_through_the_internal_route() -> None:
    doc = yaml.safe_load((ROOT / "infra/cloudrun/scheduler.yaml").read_text())
    jsonschema.validate(doc, SCHEDULER_SCHEMA)
    cron = {"rate(1 minute)": "* * * * *", "rate(5 minutes)": "*/5 * * * *", "rate(1 hour)": "0 * * * *"}
    expected = {route: [cron[e["schedule"]["rate"]] for e in spec.get("events", [])]
                for route, spec in serverless()["functions"].items() if spec.get("events")}
    jobs: dict[str, list[str]] = {}
    for job in doc["jobs"]:
        route = job["path"].split("/")[3]
        assert job["service"] == manifest(route)["metadata"]["name"]
        jobs.setdefault(route, []).append(job["schedule"])
    assert jobs == expected
    assert set(jobs) == {r for r in FUNCTIONS if scheduled(r)}


@pytest.mark.parametrize(("forwarded", "client"), [
    # Google's external Application Load Balancer appends "<client>,<load balancer>"
    ("198.51.100.7,34.120.0.1", "198.51.100.7"),
    # whatever the caller sent comes first and is not believed
    ("10.0.0.1, 1.2.3.4,198.51.100.7,34.120.0.1", "198.51.100.7"),
])
def test_the_hop_count_finds_the_client_behind_googles_load_balancer(forwarded: str, client: str) -> None:
    from types import SimpleNamespace

    from shared.pipeline import client_ip
    from shared.settings import CoreSettings

    env = {e["name"]: e.get("value") for e in manifest("webhooks")["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = CoreSettings.load(env={"TRUSTED_PROXY_HEADER": env["TRUSTED_PROXY_HEADER"] or "",
                                      "TRUSTED_PROXY_HOPS": env["TRUSTED_PROXY_HOPS"] or ""})
    ctx = SimpleNamespace(headers={"x-forwarded-for": forwarded}, request=SimpleNamespace(client=None))
    assert client_ip(ctx, settings) == client  # type: ignore[arg-type]
