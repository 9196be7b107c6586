"""API key scopes: what a key may do."""

from __future__ import annotations

CHAT = "chat"
MODELS = "models"
USAGE_READ = "usage:read"
BILLING_READ = "billing:read"
KEYS_WRITE = "keys:write"

ALL_SCOPES: tuple[str, ...] = (CHAT, MODELS, USAGE_READ, BILLING_READ, KEYS_WRITE)
DEFAULT_SCOPES: tuple[str, ...] = (CHAT, MODELS)

SCOPE_DESCRIPTIONS = {
    CHAT: "Create chat completions",
    MODELS: "List models",
    USAGE_READ: "Read usage and receipts",
    BILLING_READ: "Read credits and the ledger",
    KEYS_WRITE: "Create, change and revoke API keys",
}


def parse_scopes(raw: str | list[str] | tuple[str, ...]) -> list[str]:
    """Normalise a comma-separated string or list of scopes; unknown scopes raise ValueError."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = sorted({item.strip() for item in items if item.strip()})
    unknown = [scope for scope in scopes if scope not in ALL_SCOPES]
    if unknown:
        raise ValueError(
            f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}"
        )
    if not scopes:
        raise ValueError("at least one scope is required")
    return scopes
