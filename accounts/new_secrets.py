"""A new secret between the POST that made it and the one page that shows it.

Post/redirect/get: the create and rotate forms (and the webhook form) redirect,
so reloading the page that shows a secret repeats a GET, not the POST that
made a key. The secret waits in the session for that GET, encrypted
(novakit.crypto: the session table never holds it in the clear), and the GET
takes it out: it is shown once, and only to the session that made it.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from novakit import crypto

NEW_SECRETS_SESSION_KEY = "new_secrets"


def secret_stash(request: HttpRequest, name: str, secret: str, **extra: Any) -> None:
    """Keep `secret` (and JSON-able `extra`) for the GET that will `secret_take(name)`."""
    stash = dict(request.session.get(NEW_SECRETS_SESSION_KEY, {}))
    stash[name] = {"secret": crypto.encrypt(secret), **extra}
    request.session[NEW_SECRETS_SESSION_KEY] = stash


def secret_take(request: HttpRequest, name: str) -> dict[str, Any] | None:
    """The stashed secret and its extras, removed from the session; None once taken."""
    stash = dict(request.session.get(NEW_SECRETS_SESSION_KEY, {}))
    entry = stash.pop(name, None)
    if entry is None:
        return None
    if stash:
        request.session[NEW_SECRETS_SESSION_KEY] = stash
    else:
        del request.session[NEW_SECRETS_SESSION_KEY]
    return {**entry, "secret": crypto.decrypt(entry["secret"])}
