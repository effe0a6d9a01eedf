"""`serverless package` of serverless.yml, offline, with the pinned Serverless Framework v3
(infra/package.json; `npm ci --prefix infra` installs it): fake credentials, and every AWS
call it makes while resolving variables (SSM, STS) answered by moto's server. The generated
CloudFormation template then passes cfn-lint and is checked for what a first deploy needs:
the target runtime, both Function URL grants, the secret read at run time and nowhere in
the template, reserved concurrency and pool size. Skipped, saying why, where Node.js or the
installed tool is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edgefn.target import TARGET
from functions import FUNCTIONS
from tests.infra.test_deploy import function_url_problems

ROOT = Path(__file__).resolve().parents[2]
TOOL_DIR = ROOT / "infra" / "node_modules"
SERVERLESS = TOOL_DIR / ".bin" / "serverless"
LEAK = "postgresql://leaked:do-not-ship@db.example:5432/postgres"


@pytest.fixture(scope="module")
def ssm(s3_endpoint: str) -> str:
    """moto (the session's server) holding what an operator puts in SSM for stage prod,
    plus a secret-looking value under an old name that must not reach the template."""
    import boto3

    client = boto3.client("ssm", region_name="eu-west-1", endpoint_url=s3_endpoint,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.put_parameter(Name="/edgefn/prod/cors-origins", Value="https://app.example", Type="String", Overwrite=True)
    client.put_parameter(Name="/edgefn/prod/sentry-dsn", Value="https://key@sentry.example/1", Type="String", Overwrite=True)
    client.put_parameter(Name="/edgefn/prod/database-url", Value=LEAK, Type="SecureString", Overwrite=True)
    return s3_endpoint


def package(stage: str, endpoint: str, tmp: Path) -> dict[str, Any]:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: serverless package cannot run")
    if not SERVERLESS.exists():
        pytest.skip("the Serverless Framework is not installed: run `npm ci --prefix infra`")
    work = tmp / "service"
    (work / "dist" / "lambda").mkdir(parents=True)
    shutil.copy(ROOT / "serverless.yml", work)
    for route in FUNCTIONS:  # stand-ins for the zips: packaging reads only their bytes
        with zipfile.ZipFile(work / "dist" / "lambda" / f"{route}.zip", "w") as zf:
            zf.writestr("placeholder.txt", route)
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp),
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "EDGEFN_AWS_ENDPOINT": endpoint, "EDGEFN_SERVERLESS_DIR": str(TOOL_DIR),
        "NODE_OPTIONS": f"--require {ROOT / 'tests' / 'infra' / 'aws_endpoint.cjs'}",
        "SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off", "SLS_AWS_REQUEST_MAX_RETRIES": "0",
    }
    out = subprocess.run([str(SERVERLESS), "package", "--stage", stage, "--region", "eu-west-1", "--package", "out"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the one validation warning we accept: v3's schema predates the runtime
    warnings = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip().startswith("at '")]
    assert all("provider.runtime" in w for w in warnings), warnings
    path = work / "out" / "cloudformation-template-update-stack.json"
    doc: dict[str, Any] = json.loads(path.read_text())
    doc["_path"] = str(path)
    return doc


@pytest.fixture(scope="module")
def prod(ssm: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return package("prod", ssm, tmp_path_factory.mktemp("sls-prod"))


def functions_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["Properties"]["FunctionName"].removeprefix(f"edgefn-{stage}-"): r["Properties"]
            for r in doc["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
            for stage in [r["Properties"]["Environment"]["Variables"]["EDGEFN_STAGE"]]}


def test_the_generated_template_passes_cfn_lint(prod: dict[str, Any]) -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), prod["_path"]], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_function_url_has_both_grants(prod: dict[str, Any]) -> None:
    urls = [r for r in prod["Resources"].values() if r["Type"] == "AWS::Lambda::Url"]
    assert len(urls) == len(FUNCTIONS)
    assert function_url_problems(prod["Resources"]) == []
    # what Serverless v3 alone generates is missing the second grant: the check sees it
    bare = {k: v for k, v in prod["Resources"].items() if not k.endswith("PermissionFnUrlInvoke")}
    assert len(function_url_problems(bare)) == len(FUNCTIONS)


def test_functions_are_the_target_and_read_their_secret_at_run_time(prod: dict[str, Any]) -> None:
    text = json.dumps(prod)
    assert "leaked" not in text and "do-not-ship" not in text
    fns = functions_of(prod)
    assert set(fns) == set(FUNCTIONS)
    for route, props in fns.items():
        assert (props["Runtime"], props["Architectures"]) == (TARGET.runtime, [TARGET.arch]), route
        env = props["Environment"]["Variables"]
        assert env["EDGEFN_SECRETS"] == "aws-secretsmanager:edgefn/prod"
        assert env["EDGEFN_METRICS"] == "emf" and env["CORS_ORIGINS"] == "https://app.example"
        assert int(env["DB_POOL_MAX"]) in (1, 2)
        assert any("AWS-Parameters-and-Secrets-Lambda-Extension-Arm64" in layer for layer in props["Layers"])
        assert props["ReservedConcurrentExecutions"] >= 1, route
    statements = next(r for r in prod["Resources"].values() if r["Type"] == "AWS::IAM::Role")[
        "Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    grants = [s for s in statements if "secretsmanager:GetSecretValue" in json.dumps(s["Action"])]
    assert len(grants) == 1 and json.dumps(grants[0]["Resource"]).count("secret:edgefn/prod-*") == 1
    # every instance x its pool stays under the Supavisor budget infra/README.md states
    total = sum(p["ReservedConcurrentExecutions"] * int(p["Environment"]["Variables"]["DB_POOL_MAX"]) for p in fns.values())
    assert total <= 460


def test_other_stages_reserve_no_concurrency(ssm: str, tmp_path: Path) -> None:
    dev = package("dev", ssm, tmp_path)
    assert all("ReservedConcurrentExecutions" not in p for p in functions_of(dev).values())
    assert function_url_problems(dev["Resources"]) == []
