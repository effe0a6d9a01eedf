"""What an error report may carry: the privacy options every Sentry client here starts with,
and the scrubber they install on every event, transaction and breadcrumb.

Sentry gets no local variables (a frame's locals held the payer's email, name, IP, card
digits and authorization code), no request bodies and no default PII. Everything that is
sent passes through `scrub`, which

- replaces the value of every key that names personal or secret data: emails, names,
  phones, addresses and IPs, card fields (`last4`, `bin`, `exp_month` ...), locations,
  birthdates, tokens, secrets, keys, signatures, cookies, sessions, authorization codes;
- rewrites every string: email addresses, IPv4 and IPv6 addresses, JWTs, `Bearer`/`Basic`
  credentials, card numbers (13 to 19 digits that pass the Luhn check), secrets by their
  prefix (`whsec_`, `sk_live_`, `sb_secret_` ...), Paystack authorization codes and
  signatures, and sensitive query parameters (`?lat=`, `&token=` ...).

Any string found under a sensitive key is also removed wherever else it appears in the
same event (a payer's name in a payload is also in the message built from it). A name that
appears only in free text cannot be recognised: error messages must not carry personal
data (SECURITY.md). Sentry's own bookkeeping (`sdk`, `modules`, the SDK's contexts ...)
keeps its keys; its strings are rewritten like the rest. `shared.observability` passes
`sentry_options()` to `sentry_sdk.init`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

FILTERED = "[Filtered]"

#: words that make a key's value sensitive, matched against the key's parts
#: (`customer_email` -> customer, email; `X-Origin-Verify` -> x, origin, verify)
_KEY_WORDS = frozenset({
    # secrets
    "password", "passwd", "pwd", "secret", "token", "auth", "authorization", "cookie", "session",
    "signature", "key", "apikey", "credential", "credentials", "dsn", "verify", "otp", "pin",
    # people
    "email", "mail", "phone", "mobile", "msisdn", "name", "firstname", "lastname", "fullname",
    "username", "surname", "birthdate", "birthday", "dob", "address", "street", "postcode",
    "zip",
    # network
    "ip", "addr", "forwarded",
    # cards and accounts
    "card", "last4", "bin", "cvv", "cvc", "pan", "iban", "exp",
    # places
    "lat", "lon", "lng", "latitude", "longitude", "location", "coords",
})  # fmt: skip
#: Sentry's own sections, whose keys (`name`, `version` ...) are structure, not data; of
#: `contexts`, only the ones the SDK fills (anything set with `set_context` is scrubbed)
_STRUCTURAL = frozenset({"sdk", "modules", "debug_meta", "threads"})
_SDK_CONTEXTS = frozenset({"runtime", "os", "device", "app", "trace", "culture", "cloud_resource", "aws_lambda", "gcp", "otel"})
#: values this short are not remembered for removal from free text (too likely elsewhere)
_MIN_REMEMBERED = 4

_SPLIT = re.compile(r"[^a-z0-9]+")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), FILTERED),  # a JWT
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), r"\1 " + FILTERED),
    (re.compile(r"\b(?:whsec|sk_live|sk_test|pk_live|pk_test|rk_live|rk_test|sb_secret|sb_publishable)_[A-Za-z0-9+/=_-]+"), FILTERED),
    (re.compile(r"\b(?:AUTH|SIG)_[A-Za-z0-9]{6,}\b"), FILTERED),  # Paystack authorization code, card signature
    (re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"), FILTERED),  # an email address
    (
        re.compile(r"(?i)([?&;](?:lat|lon|lng|latitude|longitude|email|token|access_token|refresh_token|apikey|"
                   r"api_key|key|secret|code|signature|password)=)[^&\s#\"']*"),
        r"\1" + FILTERED,
    ),
    (re.compile(r"\b(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}\b"), FILTERED),  # IPv4
)  # fmt: skip
_IPV6_CANDIDATE = re.compile(r"(?<![\w:])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(?![\w:])")
_CARD_CANDIDATE = re.compile(r"\b(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7})\b")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ipv6(m: re.Match[str]) -> str:
    text = m.group(0)
    # "from 2001:db8::7: refused": the colon ends a clause, not the address
    for candidate in (text, text[:-1], text.rstrip(":.")):
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return FILTERED + text[len(candidate) :]
    return text


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", m.group(0))
    return FILTERED if _luhn(digits) else m.group(0)


def scrub_text(text: str, known: tuple[str, ...] = ()) -> str:
    """`text` with every pattern above, and each of the `known` sensitive values, replaced."""
    for value in known:
        text = text.replace(value, FILTERED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    text = _IPV6_CANDIDATE.sub(_ipv6, text)
    return _CARD_CANDIDATE.sub(_card, text)


def sensitive_key(key: str) -> bool:
    parts = [p for p in _SPLIT.split(key.lower()) if p]
    return "".join(parts) in _KEY_WORDS or any(p in _KEY_WORDS for p in parts)


def _remember(value: Any, into: set[str]) -> None:
    """Every string inside a sensitive key's value, to be removed wherever else it appears
    (a name in a payload is also a name in the exception message built from it)."""
    if isinstance(value, str):
        if len(value) >= _MIN_REMEMBERED:
            into.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _remember(v, into)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _remember(v, into)


def _collect(value: Any, into: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and sensitive_key(k):
                _remember(v, into)
            else:
                _collect(v, into)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, into)


def scrub(value: Any, *, keys: bool = True, known: tuple[str, ...] = ()) -> Any:
    """`value` with sensitive keys' values replaced and every string rewritten."""
    if isinstance(value, str):
        return scrub_text(value, known)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if keys and isinstance(k, str) and sensitive_key(k) and v not in (None, "", [], {}):
                out[k] = FILTERED
            else:
                out[k] = scrub(v, keys=keys, known=known)
        return out
    if isinstance(value, (list, tuple)):
        return [scrub(v, keys=keys, known=known) for v in value]
    return value


def _sections(event: dict[str, Any]) -> list[tuple[Any, Any, bool]]:
    """(where, value, scrub keys?) for each part of the event."""
    parts: list[tuple[Any, Any, bool]] = []
    for k, v in event.items():
        if k == "contexts" and isinstance(v, dict):
            parts += [(("contexts", name), ctx, name not in _SDK_CONTEXTS) for name, ctx in v.items()]
        else:
            parts.append((k, v, k not in _STRUCTURAL))
    return parts


def scrub_event(event: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """Sentry's `before_send` / `before_send_transaction`: the event, scrubbed."""
    parts = _sections(event)
    found: set[str] = set()
    for _, value, keyed in parts:
        if keyed:
            _collect(value, found)
    known = tuple(sorted(found, key=len, reverse=True))  # longest first: no partial leftovers
    out: dict[str, Any] = {}
    for where, value, keyed in parts:
        clean = scrub(value, keys=keyed, known=known)
        if isinstance(where, tuple):
            out.setdefault("contexts", {})[where[1]] = clean
        else:
            out[where] = clean
    return out


def scrub_breadcrumb(crumb: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """Sentry's `before_breadcrumb`: scrubbed as it is recorded, not only when sent."""
    return scrub(crumb)  # type: ignore[no-any-return]


def sentry_options() -> dict[str, Any]:
    """Keyword arguments for `sentry_sdk.init`: what must hold for every client."""
    return {
        "send_default_pii": False,
        "include_local_variables": False,
        "max_request_body_size": "never",
        "before_send": scrub_event,
        "before_send_transaction": scrub_event,
        "before_breadcrumb": scrub_breadcrumb,
    }
