"""API key secrets: generation, hashing, and the parts of a secret we may keep."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from django.conf import settings

SECRET_PREFIX = "sk_"  # noqa: S105 (the public prefix of every key, not a secret)
# 32 random bytes, URL-safe base64: 43 characters, 256 bits of entropy.
_SECRET_BYTES = 32
# What we keep in clear to name and find a key: "sk_" + 9 characters (54 bits),
# far too little to guess the rest from, enough to be unique in practice.
VISIBLE_PREFIX_LENGTH = len(SECRET_PREFIX) + 9

_SECRET_RE = re.compile(r"^sk_[A-Za-z0-9_-]{32,128}$")


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def hash_secret(secret: str) -> str:
    # A keyed hash, not a password hasher: the secret already has 256 bits of
    # entropy, and this runs on every request.
    return hmac.new(
        settings.API_KEY_HASH_SECRET.encode(), secret.encode(), hashlib.sha256
    ).hexdigest()


def visible_prefix(secret: str) -> str:
    return secret[:VISIBLE_PREFIX_LENGTH]


def looks_like_secret(value: str) -> bool:
    return bool(_SECRET_RE.match(value))


def matches_hash(candidate_hash: str, stored_hash: str) -> bool:
    return hmac.compare_digest(candidate_hash, stored_hash)
