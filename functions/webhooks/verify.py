"""Is this delivery from the provider? Checked before anything is parsed or written.

    paystack_signature_ok(secret, raw_body, headers.get("x-paystack-signature"))
    revenuecat_auth_ok(configured_value, headers.get("authorization"))
    ip_allowed(ctx.client_ip, allow_list)

Every comparison is constant-time over bytes (`hmac.compare_digest`); a missing header is
simply a mismatch, never a skipped check.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from functools import lru_cache


def paystack_signature(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA512 of the raw body keyed with the secret key (what Paystack sends)."""
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


def paystack_signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    expected = paystack_signature(secret, body).encode()
    # headers arrive as latin-1 text: encoding back gives the bytes that were sent
    given = (header or "").strip().lower().encode("latin-1", "replace")
    return hmac.compare_digest(expected, given)


def revenuecat_auth_ok(configured: str, header: str | None) -> bool:
    return hmac.compare_digest(configured.encode(), (header or "").encode("latin-1", "replace"))


@lru_cache(maxsize=16)
def _networks(allow: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(a, strict=False) for a in allow)


def ip_allowed(client_ip: str, allow: tuple[str, ...]) -> bool:
    """True when no allow-list is configured, or the address is in one of its ranges."""
    if not allow:
        return True
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in _networks(allow))
