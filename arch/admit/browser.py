"""Browsers: which web pages may call the gateway, and under what host name.

A gateway on localhost spends the operator's provider keys for whoever
reaches it. Any page a visitor opens can POST to it (a `text/plain` body
needs no CORS preflight), and a DNS-rebinding page can even read the answer,
under its own host name. So:
- a request a browser sent from a page (it carries `Origin`, as every
  cross-origin request and every POST from a page does, or
  `Sec-Fetch-Site: cross-site|same-site`) is refused with a 403 unless its
  origin is listed in `cors.origins`; a listed one gets CORS headers, and
  its preflight (OPTIONS) is answered;
- the Host header must name the listener (`allowed_hosts`; on a loopback
  address by default localhost, 127.0.0.1, ::1 and the address itself).
SDKs and curl send neither Origin nor Sec-Fetch-Site: for them this is two
header lookups.
"""
from functools import lru_cache

from arch.errors import GatewayError

EXPOSED = "x-request-id, request-id, x-arch-upstream-model, retry-after, retry-after-ms"
METHODS = "GET, POST, OPTIONS"
_BROWSER_SITES = ("cross-site", "same-site")


@lru_cache(maxsize=256)  # a client sends the same Host every time
def host_name(value):
    """'Example.com:8080' -> 'example.com'; '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def admit(config, headers):
    """The CORS headers to add to the answer ({} for a request not from a
    browser); a GatewayError (403) for a request this gateway refuses."""
    if config.allowed_hosts is not None:
        host = host_name(headers.get("Host", ""))
        if host not in config.allowed_hosts:
            raise GatewayError(403, f"the Host header {host[:100]!r} does not name this gateway "
                                    "(listener allowed_hosts)")
    origin = headers.get("Origin")
    if origin is None and headers.get("Sec-Fetch-Site") not in _BROWSER_SITES:
        return {}
    cors = config.cors
    name = (origin or "").rstrip("/").lower()
    if cors is None or not (name in cors["origins"] or ("*" in cors["origins"] and origin)):
        shown = f"from {origin[:100]!r} " if origin else ""
        raise GatewayError(403, f"requests from web pages {shown}are not allowed (the gateway's cors.origins)")
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": EXPOSED}


def preflight(config, headers):
    """The answer headers for an allowed origin's preflight (admit() ran first); None if it is none."""
    method = headers.get("Access-Control-Request-Method")
    if method is None or not headers.get("Origin"):
        return None
    patterns = config.cors["headers"]
    asked = [h.strip().lower() for h in headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()]
    allowed = [h for h in asked if any(h == p or (p.endswith("*") and h.startswith(p[:-1])) for p in patterns)]
    return {"Access-Control-Allow-Methods": METHODS, "Access-Control-Allow-Headers": ", ".join(allowed),
            "Access-Control-Max-Age": str(config.cors["max_age"])}
