"""The gateway's own API keys: who is calling, and which models they may use.

A key is kept only as its SHA-256 digest (from `key: $VAR` hashed at load, or
`key_sha256` as written). The key a client presents is hashed once and looked
up by digest: the time this takes depends on the presented key's length, not
on how much of it matches a real key, and what the lookup's comparisons could
leak is how close the presented key's *digest* came to a stored one, which
says nothing usable about the key itself (that would take a SHA-256 preimage).
The admin key is checked with `hmac.compare_digest` on digests.
"""
import hashlib
import hmac
from dataclasses import dataclass
from fnmatch import fnmatchcase

from arch.errors import GatewayError


@dataclass(frozen=True, eq=False)
class GatewayKey:
    name: str
    allowed: frozenset | None  # served names this key may call; None: all
    limits: dict
    budget: dict | None
    tags: dict


def digest(secret):
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def presented(headers):
    """The keys a request carries: `Authorization: Bearer` (OpenAI SDK) and `x-api-key` (Anthropic SDK)."""
    found = []
    auth = headers.get("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        found.append(auth[7:].strip())
    key = headers.get("x-api-key")
    if key:
        found.append(key.strip())
    return found


class Keys:
    """Built once per configuration: digest -> key, and each key's allowed names."""

    def __init__(self, entries, served, admin_key):
        """`served`: each name a client may send -> the names it goes by (a model is allowed
        by a pattern matching any of its names; an alias only by its own)."""
        self.by_digest = {}
        self.problems = []
        for e in entries:
            d = bytes.fromhex(e["key_sha256"]) if "key_sha256" in e else digest(e["key"])
            if d in self.by_digest:
                self.problems.append(f"{e['where']}: the same key as {self.by_digest[d].name!r}")
                continue
            patterns = e.get("models")
            allowed = None if patterns is None else frozenset(
                n for n, names in served.items() if any(fnmatchcase(x, p) for x in names for p in patterns))
            self.by_digest[d] = GatewayKey(name=e["name"], allowed=allowed, limits=e.get("limits") or {},
                                           budget=e.get("budget"), tags=e.get("tags") or {})
        self.admin = digest(admin_key) if admin_key else None

    def authenticate(self, headers):
        """The GatewayKey a request presents; a 401 for none or an unknown one."""
        offered = presented(headers)
        for secret in offered:
            key = self.by_digest.get(digest(secret))
            if key is not None:
                return key
        if not offered:
            raise GatewayError(401, "this gateway needs an API key: send it as `Authorization: Bearer <key>`"
                                    " or `x-api-key: <key>`")
        raise GatewayError(401, "invalid API key")

    @staticmethod
    def permit(key, name):
        if key.allowed is not None and name not in key.allowed:
            raise GatewayError(403, f"this API key may not use model '{name}'", param="model")

    def require_admin(self, headers):
        """Admin endpoints (/metrics, /v1/usage) take the admin key only."""
        offered = presented(headers)
        if not offered:
            raise GatewayError(401, "this endpoint needs the gateway's admin key")
        if self.admin is None or not any(hmac.compare_digest(digest(s), self.admin) for s in offered):
            known = any(digest(s) in self.by_digest for s in offered)  # a valid key, not the admin one
            raise GatewayError(403 if known else 401, "this endpoint needs the gateway's admin key")
