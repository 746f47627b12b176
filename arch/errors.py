"""The one exception the gateway raises for anything a client should hear about.

It carries no dialect: the handler renders it in the client's own envelope with
the client dialect's rules (`rules/dialects/<dialect>.yaml`, `error:`), so the
same failure reads as an OpenAI error to an OpenAI SDK and as an Anthropic
error to an Anthropic SDK.
"""

# What a client sent is echoed in messages (a model name, a value that failed the schema):
# capped, so that a 20 MB field never becomes a 20 MB error, log line or span.
MAX_MESSAGE = 1000


def clip(text, limit=MAX_MESSAGE):
    """`text` cut to `limit` characters, saying so."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class GatewayError(Exception):
    """A failure with an HTTP status, a message for humans and, where one
    field of the request is to blame, its path (`messages[1].role`)."""

    def __init__(self, status, message, param=None, headers=None):
        message = clip(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param if param is None else clip(param, 200)
        self.headers = headers or {}
        self.kind = None         # a more precise error type where the dialect has one (insufficient_quota)
        self.body = None         # a provider's own error body, when it can go to the client as it is
        self.retryable = False   # worth another attempt at the same target
        self.fallback = False    # worth trying the next target


class ConfigError(Exception):
    """A configuration or rules file that cannot be served; `problems` lists
    every one found, each naming the file and the path inside it."""

    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = list(problems)
