"""Everything about deployment that can be checked without a cloud account: the Lambda
zips, serverless.yml, the SAM and CloudFront templates (cfn-lint), the Cloud Run manifests,
the Dockerfile's files and command, the CI workflows and the lock file."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from functions import FUNCTIONS

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"


def settings_env_names(route: str) -> set[str]:
    module = importlib.import_module(FUNCTIONS[route])
    cls = module.fn.settings_cls
    return {cls.env_name(f) for f in cls.model_fields} | {"EDGEFN_STAGE", "EDGEFN_FUNCTION", "SENTRY_DSN", "EDGEFN_ACCESS_LOG"}


# -- serverless.yml --------------------------------------------------------------------------


def serverless() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "serverless.yml").read_text())


def test_serverless_yml_matches_the_repository() -> None:
    doc = serverless()
    assert doc["package"]["individually"] is True
    assert set(doc["functions"]) == set(FUNCTIONS)
    provider_env = set(doc["provider"]["environment"])
    for route, spec in doc["functions"].items():
        module_path, _, attr = spec["handler"].rpartition(".")
        assert (ROOT / f"{module_path}.py").exists(), spec["handler"]
        module = importlib.import_module(module_path.replace("/", "."))
        assert callable(getattr(module, attr)), spec["handler"]
        assert module_path.replace("/", ".") == FUNCTIONS[route]
        # the artifact is what `edgefn package` writes
        assert spec["package"]["artifact"] == f"dist/lambda/{route}.zip"
        assert spec.get("url") is True  # auth NONE: our middleware authenticates; no CORS here
        unknown = (provider_env | set(spec.get("environment", {}))) - settings_env_names(route)
        assert not unknown, f"{route}: variables no setting reads: {unknown}"
        for value in list(doc["provider"]["environment"].values()) + list(spec.get("environment", {}).values()):
            # secrets are references to the parameter store, never inlined
            assert not re.search(r"(postgres(ql)?://|sk_(live|test)_|whsec_)", str(value))
        for event in spec.get("events", []):
            assert "schedule" in event
            assert module.fn._scheduled is not None, f"{route} has a schedule but no @fn.scheduled coroutine"


# -- CloudFormation ----------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["infra/sam/template.yaml", "infra/cdn/cloudfront.yaml"])
def test_cloudformation_templates_pass_cfn_lint(template: str) -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(ROOT / template)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sam_template_deploys_the_same_artifacts() -> None:
    class Loader(yaml.SafeLoader):
        pass

    for tag in ("!Ref", "!Sub", "!GetAtt", "!If", "!Equals", "!Join"):
        Loader.add_constructor(tag, lambda loader, node: loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None)
    doc = yaml.load((ROOT / "infra/sam/template.yaml").read_text(), Loader=Loader)  # noqa: S506
    handlers = {}
    sls = serverless()
    for res in doc["Resources"].values():
        props = res["Properties"]
        code = (ROOT / "infra/sam" / props["CodeUri"]).resolve()
        route = code.name.removesuffix(".zip")
        handlers[route] = props["Handler"]
        assert props["FunctionUrlConfig"]["AuthType"] == "NONE"
        # the same configuration as serverless.yml: environment names and schedules
        spec = sls["functions"][route]
        sam_env = set(doc["Globals"]["Function"]["Environment"]["Variables"])
        sam_env |= set(props.get("Environment", {}).get("Variables", {}))
        sls_env = set(sls["provider"]["environment"]) | set(spec.get("environment", {}))
        assert sam_env == sls_env, f"{route}: SAM and serverless.yml set different variables: {sam_env ^ sls_env}"
        sam_rates = sorted(e["Properties"]["Schedule"] for e in props.get("Events", {}).values())
        sls_rates = sorted(e["schedule"]["rate"] for e in spec.get("events", []))
        assert sam_rates == sls_rates, route
    assert handlers == {r: s["handler"] for r, s in sls["functions"].items()}


def test_cdn_never_caches_webhooks_and_keeps_host_out() -> None:
    text = (ROOT / "infra/cdn/cloudfront.yaml").read_text()
    webhooks = text[text.index("/functions/v1/webhooks*"):]
    assert "MaxTTL: 0" in webhooks.split("- PathPattern")[0]
    assert "b689b0a8-53d0-40ab-baf2-68738e2966ac" in text  # managed AllViewerExceptHostHeader
    for route in FUNCTIONS:
        assert f"/functions/v1/{route}*" in text


# -- Cloud Run ---------------------------------------------------------------------------------


def test_cloud_run_manifests() -> None:
    for route, module in FUNCTIONS.items():
        doc = yaml.safe_load((ROOT / "infra/cloudrun" / f"{route}.yaml").read_text())
        spec = doc["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["EDGEFN_FUNCTION"]["value"] == module.split(".")[1]
        assert container["startupProbe"]["httpGet"]["path"] == f"/functions/v1/{route}/health"
        assert spec["containerConcurrency"] >= 1
        unknown = set(env) - settings_env_names(route)
        assert not unknown, f"{route}: variables no setting reads: {unknown}"
        for name, e in env.items():
            if name not in ("EDGEFN_FUNCTION", "TRUSTED_PROXY_HEADER", "TRUSTED_PROXY_HOPS"):
                assert "secretKeyRef" in e.get("valueFrom", {}), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dockerfile_copies_existing_files_and_its_command_serves_a_function() -> None:
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    copies = [ln.split()[1:-1] for ln in lines if ln.startswith("COPY ")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
    assert any(ln.startswith("USER ") and ln.split()[1] not in ("root", "0") for ln in lines)
    cmd = next(ln for ln in lines if ln.startswith("CMD "))[4:]
    port = free_port()
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "EDGEFN_FUNCTION": "webhooks",
           "PORT": str(port), "EDGEFN_ACCESS_LOG": "0"}
    cmd = cmd.replace("--host 0.0.0.0", "--host 127.0.0.1")
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/functions/v1/webhooks/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["data"]["function"] == "webhooks"
    finally:
        proc.terminate()
        proc.wait(10)


# -- CI workflows ----------------------------------------------------------------------------


def test_workflows_reference_existing_jobs_files_and_paths() -> None:
    wf_dir = ROOT / ".github/workflows"
    for path in wf_dir.glob("*.yml"):
        doc = yaml.safe_load(path.read_text())
        jobs = doc["jobs"]
        for name, job in jobs.items():
            needs = job.get("needs", [])
            for need in [needs] if isinstance(needs, str) else needs:
                assert need in jobs, f"{path.name}: {name} needs unknown job {need}"
            uses = job.get("uses", "")
            if uses.startswith("./"):
                called = yaml.safe_load((ROOT / uses).read_text())
                assert "workflow_call" in called[True]  # YAML reads the `on:` key as True
            for step in job.get("steps", []):
                run = step.get("run", "")
                for token in shlex.split(run) if run else []:
                    if token.startswith((".ci/", "requirements/")):
                        assert (ROOT / token).exists(), token
    deploy = yaml.safe_load((wf_dir / "deploy.yml").read_text())
    assert deploy["jobs"]["deploy"]["environment"] == "production"
    assert deploy["jobs"]["deploy"]["needs"] == ["changes", "migrate"]
    filters = yaml.safe_load((ROOT / ".github/path-filters.yml").read_text())
    assert set(filters) == set(FUNCTIONS)
    for route, patterns in filters.items():
        assert f"functions/{FUNCTIONS[route].split('.')[1]}/**" in patterns
        assert "shared/**" in patterns and "sql/**" in patterns and "requirements/runtime.lock" in patterns
        for pattern in patterns:
            assert (ROOT / pattern.split("*")[0].rstrip("/")).exists(), pattern


# -- the lock ----------------------------------------------------------------------------------


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = (ROOT / "requirements/runtime.lock").read_text()
    pins = dict(
        (canonicalize_name(m.group(1)), m.group(2)) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock, re.M)
    )
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock)
    assert all("--hash=sha256:" in b for b in blocks if re.match(r"[A-Za-z0-9]", b))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["serve"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name], prereleases=True), spec
    constraints = dict(
        (canonicalize_name(a), b)
        for a, b in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements/constraints.txt").read_text(), re.M)
    )
    assert constraints == pins


# -- the Lambda zips ---------------------------------------------------------------------------

PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
mod = importlib.import_module(sys.argv[2])
result = mod.handler(json.loads(sys.argv[3]), None)
missing = []
for name in sys.argv[4:]:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name}: {exc}")
print(json.dumps({"status": result["statusCode"], "body": json.loads(result["body"]), "missing": missing}))
"""


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from edgefn.package import build

    out = tmp_path_factory.mktemp("lambda")
    return {b.function: b for b in build(sorted(FUNCTIONS), out, measure=False)}


@pytest.mark.parametrize("route", sorted(FUNCTIONS))
def test_each_zip_runs_alone_from_a_recorded_function_url_event(
    route: str, zips: dict[str, Any], tmp_path: Path
) -> None:
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    from edgefn.package import OPTIONAL, PINNED_IN, PROVIDED_BY_RUNTIME, third_party_modules

    built = zips[route]
    if "boto3" not in PINNED_IN.get(route, {}):
        assert built.size < 15_000_000, f"{route}: {built.size / 1e6:.1f} MB"
        assert "boto3" not in built.distributions
    tree = tmp_path / "unpacked"
    zipfile.ZipFile(built.path).extractall(tree)
    event = json.loads((EVENTS / "function_url_get_health.json").read_text())
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/functions/v1/{route}/health"
    by_module = md.packages_distributions()
    shipped = set(built.distributions)

    not_shipped = PROVIDED_BY_RUNTIME | set(OPTIONAL.values())

    def expected(module: str) -> bool:  # boto3 comes from the runtime, Sentry only on request
        dists = {canonicalize_name(d) for d in by_module.get(module, [])}
        return bool(dists & shipped) or not (dists & not_shipped)

    modules = sorted(m for m in third_party_modules(FUNCTIONS[route].split(".")[1]) if expected(m))
    out = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, str(tree), FUNCTIONS[route], json.dumps(event), *modules],
        capture_output=True, text=True, env={"PATH": "", "EDGEFN_ACCESS_LOG": "0"}, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["body"]["data"]["function"] == route
    assert result["missing"] == []


def test_zips_are_reproducible(zips: dict[str, Any], tmp_path: Path) -> None:
    from edgefn.package import build

    again = build(["webhooks"], tmp_path, measure=False)[0]
    assert again.sha256 == zips["webhooks"].sha256
