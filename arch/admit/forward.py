"""What of a client's own request headers may reach a provider."""


def anthropic_betas(value, allowed):
    """The `anthropic-beta` values in `value` (comma-separated) that `allowed`
    lets through (exact names, or prefixes ending in `*`): a beta can switch
    on billed features under the operator's key. None when none is left."""
    kept = [v for v in (part.strip() for part in value.split(",")) if v and any(
        v == a or (a.endswith("*") and v.startswith(a[:-1])) for a in allowed)]
    return ",".join(kept) or None
