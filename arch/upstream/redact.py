"""Provider keys out of whatever a provider sends back.

A provider may echo the key it was called with: in an error ("Incorrect API
key provided: sk-..."), in an answer that repeats the request headers, in a
stream. Every provider byte bound for a client, a log line or a span goes
through one `Redactor`, built once per configuration from the configured keys.
It matches each key as JSON text can spell it (any character as itself or as
a `\\u00XX` escape, `/` also as `\\/`), so a key is caught before the bytes are
decoded anywhere, and redacting leaves valid JSON valid.

The common case costs a few substring searches: the full pattern runs only
on bytes that hold a key as it is, or a JSON escape of a character some key
contains (`\\u0073` for `s`); the escapes encoders do use (controls, `<>&`,
non-ASCII) are not among them, so they cost nothing more.
"""
import re

MASK = b"[redacted]"
MIN_SECRET = 8  # shorter values (Ollama's "ollama") are placeholders, not secrets
# Keys a provider masked itself ("sk-proj-****abcd"), in error messages only: an answer may say "key_value".
_KEYLIKE = re.compile(rb"\b(sk|key|api[-_]?key)[-_][A-Za-z0-9_*.\-]{6,}", re.I)


def _u_escape(char):
    """A regex for the JSON escape of one character (`\\u002f`), hex digits in either case."""
    return b"\\\\u" + b"".join(b"[%s%s]" % (h.encode(), h.upper().encode()) for h in f"{ord(char):04x}")


def _spellings(char):
    """A regex for one character of a key as JSON text may hold it."""
    forms = [re.escape(char.encode())]
    if ord(char) < 0x10000:
        forms.append(_u_escape(char))
    if char == "/":
        forms.append(b"\\\\/")
    return b"(?:" + b"|".join(forms) + b")"


def _escapes_of(chars):
    """A regex for any JSON escape of one of `chars`: ASCII ones grouped as
    `\\u00` + a hex digit + a set, so that matching is a literal and two sets."""
    lows, rest = {}, []
    for char in chars:
        if ord(char) < 0x80:
            lows.setdefault(ord(char) >> 4, set()).update(f"{ord(char) & 15:x}{ord(char) & 15:X}")
        elif ord(char) < 0x10000:
            rest.append(_u_escape(char))
    ascii_ = b"|".join(b"%x[%s]" % (high, "".join(sorted(low)).encode()) for high, low in sorted(lows.items()))
    forms = ([b"\\\\u00(?:" + ascii_ + b")"] if ascii_ else []) + rest + ([b"\\\\/"] if "/" in chars else [])
    return re.compile(b"|".join(forms))


class Redactor:
    def __init__(self, keys):
        keys = sorted({k for k in keys if k and len(k) >= MIN_SECRET}, key=len, reverse=True)
        self.keys = [k.encode() for k in keys]
        self._pattern = re.compile(b"|".join(b"".join(map(_spellings, k)) for k in keys)) if keys else None
        self._escape = _escapes_of({c for k in keys for c in k}) if keys else None

    def __call__(self, data, masked=False):
        """`data` (bytes) with every configured key replaced by [redacted]; with
        `masked`, also what looks like a key a provider masked (error bodies)."""
        if self._pattern is not None and (any(k in data for k in self.keys)
                                          or (b"\\" in data and self._escape.search(data))):
            data = self._pattern.sub(MASK, data)
        return _KEYLIKE.sub(MASK, data) if masked else data

    def text(self, value):
        """The same for a str (a header value, a message)."""
        return self(value.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
