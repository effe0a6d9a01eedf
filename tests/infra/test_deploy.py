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

from edgefn.target import TARGET
from functions import FUNCTIONS

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"


#: variables read outside the settings classes: by the process (shared.observability,
#: shared.emf, shared.secrets) and by the secrets extension
PROCESS_ENV = {"EDGEFN_STAGE", "EDGEFN_FUNCTION", "SENTRY_DSN", "EDGEFN_ACCESS_LOG", "EDGEFN_SECRETS",
               "EDGEFN_METRICS", "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"}
#: what a secret looks like: none may be written in a deploy file
SECRET_VALUE = re.compile(r"(postgres(ql)?://|rediss?://|sk_(live|test)_|whsec_|-----BEGIN)")


def settings_env_names(route: str) -> set[str]:
    module = importlib.import_module(FUNCTIONS[route])
    cls = module.fn.settings_cls
    return {cls.env_name(f) for f in cls.model_fields} | PROCESS_ENV


def function_url_problems(resources: dict[str, Any]) -> list[str]:
    """Each Function URL with auth NONE needs two grants to everyone: lambda:InvokeFunctionUrl
    (FunctionUrlAuthType NONE) and, since October 2025, lambda:InvokeFunction when invoked
    through a URL (InvokedViaFunctionUrl). Returns what is missing, per function."""

    def target(ref: Any) -> str:
        if isinstance(ref, dict):
            value = ref.get("Fn::GetAtt") or ref.get("Ref")
            return str(value[0] if isinstance(value, list) else str(value).split(".")[0])
        return str(ref)

    grants: dict[str, set[str]] = {}
    for res in resources.values():
        props = res.get("Properties", {})
        if res.get("Type") == "AWS::Lambda::Permission" and props.get("Principal") == "*":
            if props.get("Action") == "lambda:InvokeFunctionUrl" and props.get("FunctionUrlAuthType") == "NONE":
                grants.setdefault(target(props["FunctionName"]), set()).add("url")
            if props.get("Action") == "lambda:InvokeFunction" and props.get("InvokedViaFunctionUrl") is True:
                grants.setdefault(target(props["FunctionName"]), set()).add("invoke")
    problems = []
    for res in resources.values():
        if res.get("Type") == "AWS::Lambda::Url" and res["Properties"].get("AuthType") == "NONE":
            fn = target(res["Properties"]["TargetFunctionArn"])
            missing = {"url", "invoke"} - grants.get(fn, set())
            if missing:
                problems.append(f"{fn}: no {' and no '.join(sorted(missing))} grant")
    return problems


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
            assert not SECRET_VALUE.search(str(value))
            # no secret is resolved at deploy time either: the functions read it at init
            assert "${ssm:" not in str(value) or any(n in str(value) for n in ("cors-origins", "sentry-dsn"))
        for event in spec.get("events", []):
            assert "schedule" in event
            assert module.fn._scheduled is not None, f"{route} has a schedule but no @fn.scheduled coroutine"


# -- one target ---------------------------------------------------------------------------------


def sam() -> dict[str, Any]:
    return sam_like(ROOT / "infra/sam/template.yaml")


def sam_like(path: Path) -> dict[str, Any]:
    """A CloudFormation YAML template, short-form tags read as plain values."""

    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", tag)
    return yaml.load(path.read_text(), Loader=Loader)  # type: ignore[no-any-return]  # noqa: S506


def test_every_deploy_file_names_the_one_target() -> None:
    provider = serverless()["provider"]
    assert (provider["runtime"], provider["architecture"]) == (TARGET.runtime, TARGET.arch)
    fn = sam()["Globals"]["Function"]
    assert (fn["Runtime"], fn["Architectures"]) == (TARGET.runtime, [TARGET.arch])
    base = next(ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith("FROM "))
    assert f" python:{TARGET.python}-" in base
    for path in (ROOT / ".github/workflows").glob("*.yml"):
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job.get("steps", []):
                if step.get("uses", "").startswith("actions/setup-python"):
                    versions = str(step["with"]["python-version"]).split()
                    assert TARGET.python in versions, f"{path.name}: {versions}"
                run = step.get("run", "")
                if "edgefn package" in run:
                    # the packager's defaults are the target: no workflow overrides them
                    assert "--python" not in run and "--arch" not in run, run


@pytest.mark.network
def test_the_image_installs_the_lock_on_its_python(registry: None, tmp_path: Path) -> None:
    """Every locked distribution has a wheel for the image's Python on x86_64 (the
    Dockerfile installs with --only-binary and --require-hashes)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--require-hashes", "--python-version", TARGET.python, "--implementation", "cp",
           "--platform", "manylinux_2_36_x86_64", "--dest", str(tmp_path), "-r", str(ROOT / "requirements/runtime.lock")]
    for plat in ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
        cmd += ["--platform", plat]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


# -- CloudFormation ----------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["infra/sam/template.yaml", "infra/cdn/cloudfront.yaml", "infra/alarms.yaml"])
def test_cloudformation_templates_pass_cfn_lint(template: str) -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(ROOT / template)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sam_template_deploys_the_same_artifacts() -> None:
    doc = sam()
    handlers = {}
    sls = serverless()
    functions = {k: r for k, r in doc["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    for logical, res in functions.items():
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
        # its own secret, and nothing else; the same reserved concurrency in prod
        (policy,) = props["Policies"]
        assert "secret:edgefn/${Stage}-*" in policy["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]
        param = re.fullmatch(r"\$\{param:(\w+), null\}", spec["reservedConcurrency"])
        assert param and props["ReservedConcurrentExecutions"][1] == sls["params"]["prod"][param[1]], route
    assert handlers == {r: s["handler"] for r, s in sls["functions"].items()}
    assert not SECRET_VALUE.search((ROOT / "infra/sam/template.yaml").read_text())
    # SAM creates the InvokeFunctionUrl grant of a URL with auth NONE; the template adds
    # the InvokeFunction one for each function
    invoke = {p["Properties"]["FunctionName"].split(".")[0] for p in doc["Resources"].values()
              if p["Type"] == "AWS::Lambda::Permission" and p["Properties"].get("InvokedViaFunctionUrl") is True
              and p["Properties"]["Action"] == "lambda:InvokeFunction" and p["Properties"]["Principal"] == "*"}
    assert invoke == set(functions)


def test_alarms_cover_what_the_operator_guide_explains() -> None:
    doc = sam_like(ROOT / "infra/alarms.yaml")
    alarms = {r["Properties"]["AlarmName"].split("}-", 1)[1]: r["Properties"]
              for r in doc["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {"5xx-rate", "latency-p99", "throttles", "webhook-backlog", "outbox-age"} <= set(alarms)
    guide = (ROOT / "infra/README.md").read_text()
    for name, props in alarms.items():
        assert f"`edgefn-<stage>-{name}`" in guide, f"infra/README.md does not explain {name}"
        assert props["AlarmActions"], name
    # the EMF metrics they read are ones the functions write
    emf_doc = (ROOT / "shared/emf.py").read_text()
    for name in ("webhooks.pending", "outbox.oldest_age_s"):
        assert name in emf_doc
    metrics = {m["MetricStat"]["Metric"]["MetricName"] for a in alarms.values() for m in a.get("Metrics", [])
               if "MetricStat" in m} | {a["MetricName"] for a in alarms.values() if "MetricName" in a}
    assert {"Status5xx", "Requests", "Latency", "Throttles", "webhooks.pending", "outbox.oldest_age_s"} <= metrics
    # every function is watched for throttles and failed invocations
    for alarm in ("throttles", "invocation-errors"):
        watched = {m["MetricStat"]["Metric"]["Dimensions"][0]["Value"].split("}-", 1)[1]
                   for m in alarms[alarm]["Metrics"] if "MetricStat" in m}
        assert watched == set(FUNCTIONS), alarm


def test_cdn_never_caches_webhooks_and_keeps_host_out() -> None:
    text = (ROOT / "infra/cdn/cloudfront.yaml").read_text()
    webhooks = text[text.index("/functions/v1/webhooks*"):]
    assert "MaxTTL: 0" in webhooks.split("- PathPattern")[0]
    assert "b689b0a8-53d0-40ab-baf2-68738e2966ac" in text  # managed AllViewerExceptHostHeader
    for route in FUNCTIONS:
        assert f"/functions/v1/{route}*" in text


# -- the image (Cloud Run: tests/infra/test_cloudrun.py) ------------------------------------


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
    filters = yaml.safe_load((ROOT / ".github/path-filters.yml").read_text())
    assert set(filters) == set(FUNCTIONS)
    for route, patterns in filters.items():
        assert f"functions/{FUNCTIONS[route].split('.')[1]}/**" in patterns
        for shipped in ("shared/**", "sql/**", "requirements/runtime.lock", "edgefn/package.py",
                        "edgefn/zipcheck.py", "edgefn/target.py"):
            assert shipped in patterns, f"{route}: a change to {shipped} must redeploy it"
        for pattern in patterns:
            assert (ROOT / pattern.split("*")[0].rstrip("/")).exists(), pattern


def _matches(pattern: str, path: str) -> bool:
    """dorny/paths-filter's glob, for the patterns used here (`**` spans folders)."""
    import fnmatch

    return fnmatch.fnmatch(path, pattern.replace("**", "*"))


def _deploy_plan(changed: list[str]) -> dict[str, Any]:
    """Which deploy jobs run (and for which functions) when `changed` files are pushed:
    the path filters applied as the workflow applies them, then each job's `if:`."""
    wf = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())
    changes = wf["jobs"]["changes"]["steps"]
    infra_filter = yaml.safe_load(next(s for s in changes if s.get("id") == "infra")["with"]["filters"])["infra"]
    filters = yaml.safe_load((ROOT / ".github/path-filters.yml").read_text())
    outputs = {
        "functions": json.dumps([r for r, pats in filters.items() if any(_matches(p, f) for p in pats for f in changed)]),
        "infra": "true" if any(_matches(p, f) for p in infra_filter for f in changed) else "false",
    }
    plan: dict[str, Any] = {}
    for name, job in wf["jobs"].items():
        cond = job.get("if")
        if cond is None:
            continue
        expr = re.sub(r"needs\.changes\.outputs\.(\w+)", lambda m: repr(outputs[m[1]]), cond)
        plan[name] = eval(expr.replace("&&", " and ").replace("||", " or "))  # noqa: S307 - our own file
    plan["functions"] = json.loads(outputs["functions"])
    return plan


@pytest.mark.parametrize(("changed", "stack", "code"), [
    (["functions/webhooks/logic.py"], False, ["webhooks"]),
    (["edgefn/package.py"], False, sorted(FUNCTIONS)),
    (["shared/kv.py", "serverless.yml"], True, None),
    (["infra/alarms.yaml"], True, None),
    (["README.md", "bench/report.md"], False, None),
])
def test_the_deploy_job_ships_code_and_the_stack_when_it_changed(changed: list[str], stack: bool,
                                                                 code: list[str] | None) -> None:
    plan = _deploy_plan(changed)
    assert plan["deploy-stack"] is stack
    assert plan["deploy-code"] is (code is not None)
    assert plan["migrate"] is (stack or code is not None)
    if code is not None:
        assert sorted(plan["functions"]) == code


def test_the_deploy_jobs_upload_code_built_for_the_target() -> None:
    jobs = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())["jobs"]
    for name in ("deploy-stack", "deploy-code"):
        job = jobs[name]
        assert job["environment"] == "production" and job["needs"] == ["changes", "migrate"]
        runs = [s["run"] for s in job["steps"] if "run" in s]
        assert any("pip install" in r and "-e ." in r and "[" not in r for r in runs), "a plain install"
        assert any(r.startswith("edgefn package") for r in runs)
        assert not any("--update-config" in r for r in runs), "configuration only uploads no code"
    stack = [s["run"] for s in jobs["deploy-stack"]["steps"] if "run" in s]
    assert any(r.startswith("infra/node_modules/.bin/serverless deploy --stage") for r in stack)
    assert any("infra/alarms.yaml" in r for r in stack)
    code = " ".join(s["run"] for s in jobs["deploy-code"]["steps"] if "run" in s)
    assert "aws lambda update-function-code" in code and "--zip-file" in code and "--publish" in code


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
