"""Bad input at scale: every operation in the OpenAPI document (`edgefn.openapi.build`),
served by the whole fleet over real HTTP, gets random path parameters, query strings,
bodies, headers and tokens. Zero 500s, zero hangs, every refusal in the envelope:

- a 5xx fails, except a 503 in the error envelope (a backing service said no; there is no
  504: a dependency's deadline is `DependencyTimeout`, a 503);
- every other non-2xx must be `{"success": false, "error": {"code": "UPPER_SNAKE", ...}}`,
  and a 2xx with a body `{"success": true, ...}`;
- no answer within the client timeout (10 s) is a hang, a dropped connection a crash.

The operations come from the document, so a new route is fuzzed without a line here; its
parameters and JSON bodies are drawn from their schemas, then broken (fields dropped, added,
retyped, nested deep, made huge). `HINT_BODIES`, `HINT_RAW` and `SIGNERS` only add what a
schema cannot say: multipart uploads, event shapes, upload types and keys worth trying, and
valid or broken signatures over the very body sent. Failures are collected, not raised at
the first: each operation's test lists every distinct failure with the smallest request
that showed it.

    .venv/bin/pytest -m fuzz tests/fuzz
    EDGEFN_FUZZ_EXAMPLES=500 EDGEFN_FUZZ_REPORT=fuzz.json .venv/bin/pytest -m fuzz tests/fuzz

`EDGEFN_FUZZ_EXAMPLES` is the number of requests per operation (default 400: about 70 s
here); pytest's `--hypothesis-seed` replays a run. Request lines and headers stay under uvicorn's 16 KiB
limit for a request head (past it uvicorn answers 400 itself, before any function runs).
"""

from __future__ import annotations

import copy
import json
import os
import re
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from bench import fleet
from edgefn.openapi import build
from functions.realtime_orchestrator.models import InternalEvent
from functions.realtime_orchestrator.rules import RULES, TABLE_ROUTES
from functions.upload_media.rules import BUCKETS
from tests.functions.upload_media import samples
from tests.fuzz.conftest import TIMEOUT, Failure, FuzzRun, Target

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("EDGEFN_FUZZ_EXAMPLES", "400"))
CODE = re.compile(r"^[A-Z][A-Z0-9_]*$")
DOC = build()
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
Draw = Callable[[st.SearchStrategy[Any]], Any]
Headers = list[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    path: str
    spec: dict[str, Any]

    def params(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.spec["parameters"] if p["in"] == where]

    @property
    def body(self) -> tuple[str, dict[str, Any]] | None:
        """(media type, schema) of the request body, if it has one."""
        for media, content in self.spec.get("requestBody", {}).get("content", {}).items():
            return media, content.get("schema", {})
        return None


def operations(doc: dict[str, Any]) -> list[Operation]:
    return [Operation(op["operationId"], method.upper(), path, op)
            for path, ops in doc["paths"].items() for method, op in ops.items()]  # fmt: skip


OPERATIONS = operations(DOC)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """one_of with weights (hypothesis has none)."""
    return st.sampled_from([s for w, s in choices for _ in range(w)]).flatmap(lambda s: s)


# -- values ------------------------------------------------------------------------------------

SPECIAL = [
    "", " ", "null", "undefined", "NaN", "-1", "0", "1e309", "true", "[]", "{}", "../../etc/passwd", "%00",
    "\x00", "a\x00b", "'; select pg_sleep(30); --", "${jndi:ldap://x}", "<script>alert(1)</script>", "\u202e",
    "ü", "😀", "\ufeff", "0x10", "9" * 40, "-0", "Infinity",
]  # fmt: skip
BIG_INTS = st.sampled_from([2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, -1, 0])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), BIG_INTS, st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20), st.sampled_from(SPECIAL),
)  # fmt: skip
junk = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)  # fmt: skip
#: big enough to pass any field limit; the largest pass the 1 MiB body limit once encoded
huge = st.builds(
    lambda c, n: c * n, st.sampled_from(["x", "é", "😀", "\x00", "\n"]), st.sampled_from([300, 5_000, 70_000, 600_000])
)
#: printable ASCII, what a header or token may carry
token_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300)
latin1_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=120)


def nest(depth: int, leaf: Any, as_list: bool) -> Any:
    for _ in range(depth):
        leaf = [leaf] if as_list else {"a": leaf}
    return leaf


deep = st.builds(nest, st.integers(5, 400), scalars, st.booleans())


@dataclass(frozen=True)
class Pools:
    """Ids worth drawing: the seeded users' and media, mixed with random ones."""

    users: tuple[str, ...]
    media: tuple[str, ...]

    @property
    def ids(self) -> st.SearchStrategy[str]:
        return weighted((3, st.sampled_from(self.users + self.media)), (1, st.uuids().map(str)))


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def string_for(schema: dict[str, Any], pools: Pools) -> st.SearchStrategy[str]:
    fmt = schema.get("format")
    if fmt == "uuid":
        return pools.ids
    if fmt == "date-time":
        return st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
    if fmt == "date":
        return st.dates().map(lambda d: d.isoformat())
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    low = schema.get("minLength", 0)
    return st.text(min_size=low, max_size=max(low, min(schema.get("maxLength", 40), 40)))


def from_schema(schema: dict[str, Any], pools: Pools, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped like a (pydantic-made) JSON schema: right names, right types, mostly
    within bounds. Breaking them is `broken`'s job."""
    schema = resolve(schema)
    if depth > 6:
        return junk
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, pools, depth + 1) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, pools, depth) for k in kind])
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if not props:
            return st.dictionaries(st.text(max_size=10), junk, max_size=3)
        required = set(schema.get("required", []))
        fields = {k: from_schema(v, pools, depth + 1) for k, v in props.items()}
        return st.fixed_dictionaries(
            {k: s for k, s in fields.items() if k in required}, optional={k: s for k, s in fields.items() if k not in required}
        )
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(from_schema(schema.get("items", {}), pools, depth + 1), min_size=low,
                        max_size=min(schema.get("maxItems", low + 4), low + 4))  # fmt: skip
    if kind == "string":
        return string_for(schema, pools)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum"),
                         exclude_min="exclusiveMinimum" in schema, allow_nan=False, allow_infinity=False)  # fmt: skip
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return junk


def slots(value: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every dict entry and list item, at any depth."""
    found: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            found.append((node, k))
            stack.append(v)
    return found


EXTRA_KEYS = st.one_of(st.text(max_size=12), st.sampled_from(["user_id", "__proto__", "id", "owner_id", "role", "tier"]))


@st.composite
def broken(draw: Draw, shaped: st.SearchStrategy[Any]) -> Any:
    """A shaped value with 1 to 3 things wrong with it, at any depth."""
    value = copy.deepcopy(draw(shaped))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["drop", "extra", "retype", "retype", "nest", "huge", "grow"]))
        places = slots(value)
        if how == "extra":
            dicts = [value] + [c[k] for c, k in places if isinstance(c[k], dict)]
            dicts = [d for d in dicts if isinstance(d, dict)]
            if dicts:
                draw(st.sampled_from(dicts))[draw(EXTRA_KEYS)] = draw(junk)
            continue
        if not places:
            value = draw(junk)
            continue
        container, key = draw(st.sampled_from(places))
        if how == "drop":
            del container[key]
        elif how == "retype":
            container[key] = draw(junk)
        elif how == "nest":
            container[key] = draw(deep)
        elif how == "huge":
            container[key] = draw(huge)
        else:
            old = container[key]
            container[key] = (old if isinstance(old, list) and old else [old]) * draw(st.integers(2, 60))
    return value


# -- bodies ------------------------------------------------------------------------------------


@st.composite
def encoded(draw: Draw, values: st.SearchStrategy[Any]) -> bytes:
    value = draw(values)
    try:
        text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    except RecursionError:  # nested deeper than json.dumps goes: NOT_JSON sends such bodies
        assume(False)
    return text.encode("utf-8", "surrogatepass")


NOT_JSON = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(str.encode),
    st.sampled_from([
        b"NaN", b"{", b'{"a":}', b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"a": "\\ud800"}', b'{"a": 1e999}',
        b'{"a": 123456789012345678901234567890}', b"[" * 3000 + b"]" * 3000, b'{"a": 1, "a": 2}', b"null",
        b"0", b'"str"', b"[]", b'{"\\u0000": "\\u0000"}', b"\x00" * 64, b"a=1&b=2",
    ]),
)  # fmt: skip
JSON_TYPES = ["application/json", "application/json", "application/json", "application/json; charset=utf-8",
              "APPLICATION/JSON", "application/vnd.api+json"]  # fmt: skip
OTHER_TYPES = ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", "image/png",
               "multipart/form-data; boundary=x", "application/xml", ";;;", "json"]  # fmt: skip
content_types = weighted((8, st.sampled_from(JSON_TYPES)), (1, st.none()), (1, st.sampled_from(OTHER_TYPES)), (1, token_text))
MAGIC = [samples.PNG, samples.JPEG, samples.GIF, samples.WEBP, samples.MP4, samples.MOV, samples.WEBM, samples.HEIC,
         samples.HTML, b""]  # fmt: skip
boundaries = st.one_of(
    st.sampled_from([samples.BOUNDARY, "b", "x" * 70, "x" * 201, "---", "a b"]),
    st.text(alphabet=string.ascii_letters + string.digits + "'()+_,-./:=?", min_size=1, max_size=80),
)
file_bytes = st.builds(
    samples.sized, st.sampled_from(MAGIC), weighted((8, st.integers(0, 3000)), (1, st.sampled_from([300_000, 4_300_000])))
)


@st.composite
def multipart(draw: Draw) -> tuple[bytes, str | None]:
    """Multipart junk: random parts, names, file names, types and bytes, broken framing."""
    boundary = draw(boundaries)
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(st.sampled_from(["file", "bucket", "file", "bucket", "extra"]), st.text(max_size=10)))
        filename = draw(st.one_of(st.none(), st.sampled_from(["photo.png", "a.jpg", "x.exe", "../../x.png", "ü.gif", ""]),
                                  st.text(max_size=20)))  # fmt: skip
        ctype = draw(st.one_of(st.none(), st.sampled_from(["image/png", "image/jpeg", "video/mp4", "text/html"]),
                               st.text(max_size=20)))  # fmt: skip
        if name == "bucket":
            data = draw(st.one_of(st.sampled_from(BUCKETS), st.text(max_size=20), huge.map(lambda s: s[:2000]))).encode()
        else:
            data = draw(file_bytes)
        disposition = draw(st.sampled_from(["form-data", "form-data", "form-data", "attachment", ""]))
        disp = f'{disposition}; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "")
        parts.append(head.encode("utf-8", "surrogatepass") + b"\r\n" + data + b"\r\n")
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    framing = draw(st.sampled_from(["ok", "ok", "ok", "lf", "truncate"]))
    if framing == "lf":
        body = body.replace(b"\r\n", b"\n")
    elif framing == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    declared = draw(st.one_of(st.just(boundary), boundaries))
    ctype_header = draw(st.sampled_from([
        f"multipart/form-data; boundary={declared}", f"multipart/form-data; boundary={declared}",
        f'multipart/form-data; boundary="{declared}"', "multipart/form-data", f"multipart/mixed; boundary={declared}",
        "application/octet-stream", None,
    ]))  # fmt: skip
    return body, ctype_header


#: (first bytes, bucket, file name, declared type) of uploads that agree with themselves
GOOD_UPLOADS = [
    (samples.PNG, "avatars", "photo.png", "image/png"), (samples.JPEG, "posts", "photo.jpg", "image/jpeg"),
    (samples.MP4, "videos", "clip.mp4", "video/mp4"), (samples.GIF, "products", "a.gif", None),
    (samples.WEBP, "covers", None, "application/octet-stream"),
]  # fmt: skip


@st.composite
def upload_form(draw: Draw) -> tuple[bytes, str | None]:
    """A well-formed upload: one whose parts agree, or one mixing the parts of several (a
    type its bucket refuses, a name or declared type the bytes contradict, HTML)."""
    magic, bucket, filename, ctype = draw(st.sampled_from(GOOD_UPLOADS))
    if draw(st.booleans()):
        magic = draw(st.sampled_from([samples.HTML, samples.HEIC, *(u[0] for u in GOOD_UPLOADS)]))
        bucket = draw(st.sampled_from([*BUCKETS, "nope"]))
        filename = draw(st.sampled_from([u[2] for u in GOOD_UPLOADS] + ["x.html"]))
        ctype = draw(st.sampled_from([u[3] for u in GOOD_UPLOADS] + ["text/html"]))
    data = samples.sized(magic, draw(weighted((8, st.integers(len(magic), 5000)), (1, st.just(4_300_000)))))
    body = samples.form(data, bucket=bucket, filename=filename, ctype=ctype, bucket_first=draw(st.booleans()))
    return body, samples.CONTENT_TYPE


def presign_bodies(pools: Pools) -> st.SearchStrategy[Any]:
    types = ["image/png", "image/jpeg", "image/webp", "video/mp4", "video/quicktime", "text/html", "image/svg+xml"]
    return st.fixed_dictionaries(
        {"bucket": st.sampled_from(BUCKETS), "content_type": st.sampled_from(types),
         "content_length": weighted((4, st.integers(0, 6 * 1024 * 1024)), (1, st.integers()))},
        optional={"filename": st.sampled_from(["a.png", "b.jpg", "c.mp4", "d.mov", "e.exe", "", ".png"])},
    )  # fmt: skip


def confirm_bodies(pools: Pools) -> st.SearchStrategy[Any]:
    """Keys shaped like the ones presign hands out, for the seeded users and others."""
    key = st.builds(lambda b, u, h, e: f"{b}/{u}/{h}.{e}", st.sampled_from(BUCKETS), pools.ids,
                    st.uuids().map(lambda u: u.hex), st.sampled_from(["png", "jpg", "mp4", "exe"]))  # fmt: skip
    return st.fixed_dictionaries({"key": key})


def event_bodies(pools: Pools) -> st.SearchStrategy[Any]:
    """Internal events of every routed type, and Supabase database webhooks for every
    routed table, their records filled with seeded ids, random ids and junk."""
    schema = InternalEvent.model_json_schema()
    recipients = st.lists(pools.ids, max_size=4)
    internal = st.fixed_dictionaries(
        {"type": st.sampled_from(sorted(RULES)), "data": st.dictionaries(st.text(max_size=10), junk, max_size=4)},
        optional={"recipients": recipients, "timestamp": string_for(schema["properties"]["timestamp"]["anyOf"][0], pools)},
    )
    cell = st.one_of(pools.ids, pools.ids, junk)

    def hook(route: Any) -> st.SearchStrategy[Any]:
        columns = {*route.recipient_columns, *route.data.values(), *route.changed, route.when_column or "status"}
        value = st.one_of(cell, st.sampled_from(["stored", "active", "paid"]))
        record = st.fixed_dictionaries({}, optional={c: value for c in columns})
        return st.fixed_dictionaries({
            "type": st.sampled_from(["INSERT", "UPDATE", "DELETE", "TRUNCATE"]), "table": st.just(route.table),
            "schema": st.sampled_from([route.schema, route.schema, "auth"]), "record": st.one_of(st.none(), record),
            "old_record": st.one_of(st.none(), record),
        })  # fmt: skip

    return st.one_of(internal, *(hook(r) for r in TABLE_ROUTES))


#: operation id -> extra JSON shapes: a raw route's body (its schema says nothing), or values
#: its schema cannot say are meaningful (types and sizes presign takes, keys confirm looks up)
HINT_BODIES: dict[str, Callable[[Pools], st.SearchStrategy[Any]]] = {
    "realtime-orchestrator.events": event_bodies,
    "upload-media.presign": presign_bodies,
    "upload-media.confirm": confirm_bodies,
}
#: operation id -> body strategies of its own (bytes, content type)
HINT_RAW: dict[str, st.SearchStrategy[tuple[bytes, str | None]]] = {
    "upload-media.upload": st.one_of(upload_form(), multipart()),
}


def json_values(op: Operation, pools: Pools) -> st.SearchStrategy[Any]:
    body = op.body
    shapes: list[st.SearchStrategy[Any]] = []
    if body is not None and resolve(body[1]):
        shapes.append(from_schema(body[1], pools))
    if op.id in HINT_BODIES:
        shapes.append(HINT_BODIES[op.id](pools))
    if not shapes:
        return junk
    shaped = st.one_of(shapes)
    return weighted((4, shaped), (3, broken(shaped)), (1, junk))


def bodies(op: Operation, pools: Pools) -> st.SearchStrategy[tuple[bytes | None, str | None]]:
    """(body, content type) for an operation: JSON shaped after its schema and broken,
    anything but JSON, nothing, the wrong content type, multipart junk."""
    as_json = st.tuples(encoded(json_values(op, pools)), content_types)
    other = st.tuples(NOT_JSON, content_types)
    empty = st.tuples(st.sampled_from([None, b""]), content_types)
    if op.body is None:  # GET / DELETE: mostly no body, sometimes one anyway
        return weighted((9, st.just((None, None))), (1, as_json), (1, other))
    choices = [(8, as_json), (2, other), (1, empty), (1, multipart())]
    if op.id in HINT_RAW:
        choices.append((6, HINT_RAW[op.id]))
    return weighted(*choices)


# -- parameters --------------------------------------------------------------------------------


def fit(value: str, limit: int) -> str:
    """`value` cut until it takes at most `limit` characters in a URL."""
    while len(quote(value)) > limit:
        value = value[: len(value) // 2]
    return value


def text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


@st.composite
def query(draw: Draw, op: Operation, pools: Pools) -> list[tuple[str, str]]:
    """Declared parameters missing, valid, wrong-typed, huge, unicode or repeated; plus extras.
    Every value stays short enough for the request head limit."""
    out: list[tuple[str, str]] = []
    for p in op.params("query"):
        how = draw(st.sampled_from(["omit"] * 3 + ["valid"] * 5 + ["wrong", "huge", "repeat"]))
        if how == "omit":
            continue
        if how == "valid":
            out.append((p["name"], text_of(draw(from_schema(p["schema"], pools)))))
        elif how == "wrong":
            out.append((p["name"], text_of(draw(junk))[:500]))
        elif how == "huge":
            out.append((p["name"], fit(draw(huge), 2000)))
        else:
            out += [(p["name"], text_of(draw(from_schema(p["schema"], pools)))) for _ in range(2)]
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2]))):
        name = draw(st.one_of(st.text(min_size=1, max_size=10), st.sampled_from(["user_id", "deep", "limit", "cursor", ""])))
        out.append((name, text_of(draw(junk))[:200]))
    return out


def path_values(pools: Pools) -> st.SearchStrategy[str]:
    garbage = st.sampled_from([
        "not-a-uuid", "0", "-1", "null", "..", ".", "%", "%00", "ü", "😀", "a" * 2000,
        "00000000-0000-0000-0000-000000000000", "' or 1=1 --", "{00000000-0000-4000-8000-000000000001}",
        "00000000000040008000000000000001", "a/b", "?x=1", "#frag",
    ])  # fmt: skip
    ids = st.sampled_from(pools.media + pools.users)
    value = weighted((4, ids), (1, ids.map(str.upper)), (1, st.uuids().map(str)), (2, garbage),
                     (1, st.text(min_size=1, max_size=50)))  # fmt: skip
    return st.builds(lambda v, safe: quote(v, safe=safe), value, st.sampled_from(["", "", "", "/"]))


# -- headers and tokens ------------------------------------------------------------------------

RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "content-type", "te",
                      "trailer", "keep-alive", "expect", "authorization", "x-supabase-authorization",
                      "x-paystack-signature", "webhook-id", "webhook-timestamp", "webhook-signature",
                      "x-webhook-secret"})  # fmt: skip
header_names = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=30).filter(
    lambda n: n.lower() not in RESERVED
)


def header_value(text: str) -> bytes:
    return text.strip(" \t").encode("latin-1")


junk_header = st.one_of(
    st.tuples(st.just("x-request-id"), token_text.map(lambda s: s[:200])),
    st.tuples(st.just("if-none-match"), st.one_of(st.sampled_from(["*", '"abc"', 'W/"x"', '"', ""]), token_text)),
    st.tuples(st.sampled_from(["x-forwarded-for", "cloudfront-viewer-address", "x-real-ip"]),
              st.one_of(st.sampled_from(["1.2.3.4", "[::1]:80", "::1", ",,,", "999.999.1.1"]), token_text)),
    st.tuples(st.just("origin"),
              st.one_of(st.sampled_from(["https://evil.example", "null", "http://localhost:3000"]), token_text)),
    st.tuples(st.sampled_from(["accept", "accept-encoding", "accept-language", "x-api-version", "idempotency-key",
                               "x-client-info", "apikey", "cookie", "range", "user-agent"]), token_text),
    st.tuples(header_names, latin1_value.map(header_value)),
)  # fmt: skip


def bearer(token: str, draw: Draw) -> Headers:
    scheme = draw(weighted((6, st.just("Bearer ")), (1, st.sampled_from(["bearer ", "BEARER   ", "Token ", ""]))))
    where = draw(st.sampled_from(["authorization", "authorization", "x-supabase-authorization"]))
    return [(where, (scheme + token).strip())]


#: the seeded users' plain tokens, most of the requests' (so they reach each route's logic)
USUAL_TOKENS = ["valid: owner", "valid: owner", "valid: paid user", "valid: other user", "valid: admin tier"]


def token_auth(draw: Draw, target: Target) -> tuple[Headers, str]:
    label = draw(weighted((6, st.sampled_from(USUAL_TOKENS)), (2, st.sampled_from(sorted(target.tokens))),
                          (1, st.just("none")), (1, st.just("garbage"))))  # fmt: skip
    if label == "none":
        return [], "no token"
    token = draw(token_text) if label == "garbage" else target.tokens[label]
    headers = bearer(token, draw)
    return headers, f"{label} token in {headers[0][0]}"


def paystack_signature(draw: Draw, body: bytes, target: Target) -> tuple[Headers, str]:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "none", "garbage", "other body", "uppercase"]))
    sig = fleet.paystack_headers(body)["x-paystack-signature"]
    value = {"valid": sig, "none": None, "garbage": draw(token_text), "uppercase": sig.upper(),
             "other body": fleet.paystack_headers(body + b" ")["x-paystack-signature"]}[kind]  # fmt: skip
    return ([("x-paystack-signature", value)] if value is not None else []), f"paystack signature: {kind}"


def revenuecat_auth(draw: Draw, body: bytes, target: Target) -> tuple[Headers, str]:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "none", "garbage", "a user token"]))
    if kind == "none":
        return [], "revenuecat authorization: none"
    value = {"valid": fleet.REVENUECAT_AUTH, "garbage": draw(token_text),
             "a user token": "Bearer " + target.tokens["valid: owner"]}[kind]  # fmt: skip
    return [("authorization", value)], f"revenuecat authorization: {kind}"


def event_signature(draw: Draw, body: bytes, target: Target) -> tuple[Headers, str]:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "db secret", "db secret", "bad signature", "expired",
                                 "timestamp garbage", "long id", "missing part", "wrong db secret", "none"]))  # fmt: skip
    if kind == "none":
        return [], "no signature"
    if kind in ("db secret", "wrong db secret"):
        return [("x-webhook-secret", fleet.DB_WEBHOOK_SECRET if kind == "db secret" else draw(token_text))], kind
    msg_id = "x" * 300 if kind == "long id" else None
    signed = fleet.standard_webhook_headers(body, msg_id=msg_id, ts=int(time.time()) - 3600 if kind == "expired" else None)
    signed.pop("content-type")
    if kind == "bad signature":
        signed["webhook-signature"] = "v1," + draw(token_text)
    elif kind == "timestamp garbage":
        signed["webhook-timestamp"] = draw(token_text)
    elif kind == "missing part":
        signed.pop(draw(st.sampled_from(sorted(signed))))
    return list(signed.items()), f"standard webhook: {kind}"


def drain_auth(draw: Draw, body: bytes, target: Target) -> tuple[Headers, str]:
    kind = draw(st.sampled_from(["drain secret", "service key", "service_role token", "user token", "garbage", "none"]))
    token = {"drain secret": fleet.DRAIN_SECRET, "service key": fleet.SERVICE_KEY, "garbage": draw(token_text),
             "service_role token": target.tokens["valid: service_role"], "user token": target.tokens["valid: owner"],
             "none": None}[kind]  # fmt: skip
    return (bearer(token, draw) if token is not None else []), f"drain: {kind}"


#: operation id -> who signs its requests, instead of a user's bearer token
SIGNERS: dict[str, Callable[[Draw, bytes, Target], tuple[Headers, str]]] = {
    "webhooks.paystack": paystack_signature,
    "webhooks.revenuecat": revenuecat_auth,
    "realtime-orchestrator.events": event_signature,
    "realtime-orchestrator.drain": drain_auth,
}


# -- the case ----------------------------------------------------------------------------------


@dataclass
class Case:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Headers
    body: bytes | None
    chunked: bool
    auth: str

    def size(self) -> int:
        return (len(self.body or b"") + len(self.path) + sum(len(k) + len(v) for k, v in self.query)
                + sum(len(k) + len(v) for k, v in self.headers))  # fmt: skip

    def repro(self) -> dict[str, Any]:
        def short(v: str | bytes, n: int = 120) -> str:
            s = v.decode("latin-1") if isinstance(v, bytes) else v
            return s if len(s) <= n else f"{s[:n]}... ({len(s)} chars)"

        body = self.body or b""
        return {
            "method": self.method, "path": short(self.path, 200), "query": [(k[:40], short(v, 80)) for k, v in self.query],
            "auth": self.auth, "headers": [(k, short(v)) for k, v in self.headers],
            "body_prefix": short(body.decode("utf-8", "backslashreplace"), 300), "body_bytes": len(body),
            "chunked": self.chunked,
        }  # fmt: skip


OTHER_METHODS = ["PUT", "PATCH", "OPTIONS", "GET", "POST", "DELETE"]


@st.composite
def cases(draw: Draw, op: Operation, target: Target) -> Case:
    pools = Pools(target.users, target.media)
    method = op.method if draw(st.integers(0, 29)) else draw(st.sampled_from(OTHER_METHODS))
    path = re.sub(r"\{(\w+)\}", lambda m: draw(path_values(pools)), op.path)
    body, ctype = draw(bodies(op, pools))
    headers: Headers = [("content-type", ctype)] if ctype is not None else []
    signer = SIGNERS.get(op.id)
    auth, label = signer(draw, body or b"", target) if signer else token_auth(draw, target)
    headers += auth + draw(st.lists(junk_header, max_size=3))
    if method == "OPTIONS" and draw(st.booleans()):
        headers += [("origin", "https://app.example"), ("access-control-request-method", op.method)]
    chunked = bool(body) and draw(st.integers(0, 9)) == 0
    return Case(method, path, draw(query(op, pools)), headers, body, chunked, label)


# -- sending and judging -----------------------------------------------------------------------


def chunks(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 4096):
        yield body[i : i + 4096]


def judge(resp: httpx.Response) -> tuple[str | None, str | None]:
    """(what is wrong or None, the error code if any)."""
    status = resp.status_code
    try:
        body = resp.json() if resp.content else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) and body.get("success") is False else None
    code = error.get("code") if isinstance(error, dict) else None
    code = code if isinstance(code, str) else None
    if 200 <= status < 300 or status == 304:
        if not resp.content or (isinstance(body, dict) and body.get("success") is True):
            return None, None
        return "a 2xx without the success envelope", None
    if status >= 500 and status != 503:
        return "server error", code
    if code is None or not CODE.match(code):
        return "no error envelope with a stable code", code
    return None, code


#: codes of refusals made before a route's own logic runs: routing, parsing, limits, tokens, signatures
PRE_LOGIC = frozenset({
    "ROUTE_NOT_FOUND", "METHOD_NOT_ALLOWED", "CORS_ORIGIN_NOT_ALLOWED", "VALIDATION_ERROR", "INVALID_JSON",
    "UNSUPPORTED_CONTENT_TYPE", "PAYLOAD_TOO_LARGE", "RATE_LIMITED", "AUTH_REQUIRED", "SECRET_INVALID",
    "INVALID_SIGNATURE", "INVALID_AUTHORIZATION", "IP_NOT_ALLOWED",
})  # fmt: skip


def reached_logic(status: int, code: str | None) -> bool:
    """The route's own logic answered: a success, or a refusal none of the layers before it makes."""
    if 200 <= status < 300:
        return True
    return 400 <= status < 500 and code is not None and code not in PRE_LOGIC and not code.startswith(("TOKEN_", "SIGNATURE_"))


def send(client: httpx.Client, case: Case) -> httpx.Response | str:
    """The response, or what went wrong on the way (a hang, a dropped connection)."""
    content = chunks(case.body) if case.body and case.chunked else case.body
    try:
        return client.request(case.method, case.path, params=case.query, headers=case.headers, content=content)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.TransportError as exc:
        return f"transport error: {type(exc).__name__}"


def render(failures: list[Failure]) -> str:
    return "\n\n".join(
        f"{x.kind}: {x.status} {x.code or ''} ({x.count}x)\n{json.dumps(x.repro, indent=2, ensure_ascii=False)}"
        for x in failures
    )


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate], print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)  # fmt: skip


@pytest.mark.parametrize("op", OPERATIONS, ids=[o.id for o in OPERATIONS])
def test_operation_survives_random_input(
    op: Operation, fuzz_target: Target, fuzz_client: httpx.Client, fuzz_run: FuzzRun
) -> None:
    @FUZZ_SETTINGS
    @given(cases(op, fuzz_target))
    def fuzz(case: Case) -> None:
        resp = send(fuzz_client, case)
        if isinstance(resp, str):
            kind = f"hang (no answer in {TIMEOUT:.0f} s)" if resp == "timeout" else "dropped connection"
            fuzz_run.record(op.id, resp, None, reached=False)
            fuzz_run.fail(op.id, kind, resp, None, case.size(), case.repro())
            return
        wrong, code = judge(resp)
        reached = case.method == op.method and reached_logic(resp.status_code, code)
        fuzz_run.record(op.id, str(resp.status_code), code, reached)
        if wrong is not None:
            repro = {**case.repro(), "response": resp.text[:300], "request_id": resp.headers.get("x-request-id")}
            fuzz_run.fail(op.id, wrong, str(resp.status_code), code, case.size(), repro)

    fuzz()
    found = fuzz_run.failures_of(op.id)
    assert not found, f"{len(found)} distinct failures on {op.method} {op.path}:\n" + render(found)


def test_what_the_fuzzer_found_stays_fixed(fuzz_target: Target, fuzz_client: httpx.Client) -> None:
    """The requests that once failed (500s, refusals outside the envelope), sent as found."""
    c, base = fuzz_client, "/functions/v1"
    owner = {"authorization": "Bearer " + fuzz_target.tokens["valid: owner"]}
    no_user = {"authorization": "Bearer " + fuzz_target.tokens["valid: sub not a uuid"]}

    def event(body: dict[str, Any], signed: bool = True) -> httpx.Response:
        raw = json.dumps(body).encode()
        headers = fleet.standard_webhook_headers(raw) if signed else {"x-webhook-secret": fleet.DB_WEBHOOK_SECRET}
        return c.post(f"{base}/realtime-orchestrator/events", content=raw, headers=headers)

    def hook(table: str, record: dict[str, Any]) -> httpx.Response:
        return event({"type": "INSERT", "table": table, "schema": "public", "record": record}, signed=False)

    big = {"type": "like.received", "data": {"x": 1e20, "y": 2**64}, "recipients": [fuzz_target.users[0]]}
    checks = [
        # a preflight from an origin not allowed: text/plain
        (c.options(f"{base}/batch-swipe", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}),
         403, "CORS_ORIGIN_NOT_ALLOWED"),
        # a signed token whose subject is not a user id: a uuid cast in SQL
        (c.get(f"{base}/realtime-orchestrator/inbox", headers=no_user), 403, "INVALID_SUBJECT"),
        # a radius that underflows the distance arithmetic
        (c.get(f"{base}/recommendations", params={"max_distance_km": "5e-324"}, headers=owner), 400, "VALIDATION_ERROR"),
        # database webhooks whose rows hold lists: a uuid cast, an unhashable lookup
        (hook("matches", {"id": "m", "user_a": fuzz_target.users[0], "user_b": [[], [True]]}), 400, "VALIDATION_ERROR"),
        (hook("media_objects", {"id": "m", "owner_id": fuzz_target.users[0], "status": ["stored"]}), 202, None),
        # U+0000 in event data: jsonb refuses it
        (event({"type": "like.received", "data": {"k\x00": "\x00"}}), 400, "VALIDATION_ERROR"),
        # numbers past 64 bits in event data: stored, then the inbox could not write them
        (event(big), 202, None),
        (c.get(f"{base}/realtime-orchestrator/inbox", params={"limit": "500"}, headers=owner), 200, None),
    ]  # fmt: skip
    wrong = [(r.request.method, str(r.request.url), r.status_code, r.text[:300]) for r, status, code in checks
             if r.status_code != status or judge(r) != (None, code)]  # fmt: skip
    assert not wrong
    events = c.get(f"{base}/realtime-orchestrator/inbox", params={"limit": "500"}, headers=owner).json()["data"]["events"]
    assert {"x": 1e20, "y": float(2**64)} in [e["data"] for e in events]


def test_every_operation_in_the_document_was_fuzzed(fuzz_run: FuzzRun) -> None:
    """Runs last: every operation of a freshly built document got its cases (at least half
    of EDGEFN_FUZZ_EXAMPLES; hypothesis may stop early on a small input space), and the
    fuzzer got into each one's own logic at least once (valid tokens, ids and signatures
    work: it is not only bouncing off validation and authentication)."""
    expected = {op["operationId"] for ops in build()["paths"].values() for op in ops.values()}
    short = {op: fuzz_run.cases[op] for op in expected if fuzz_run.cases[op] < max(1, EXAMPLES // 2)}
    assert not short, f"operations not fuzzed (cases run): {short}"
    unreached = sorted(expected - set(fuzz_run.reached))
    assert not unreached, f"never got past validation and auth: {unreached}"
    assert set(fuzz_run.cases) == expected
