"""Secrets NovaKit must read back (provider API keys, webhook signing secrets), encrypted at rest.

Fernet, with a key derived from PROVIDER_KEY_ENCRYPTION_SECRET.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    digest = hashlib.sha256(
        b"novakit-provider-keys:" + settings.PROVIDER_KEY_ENCRYPTION_SECRET.encode()
    ).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode() if plaintext else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            "a provider key cannot be decrypted: PROVIDER_KEY_ENCRYPTION_SECRET changed?"
        ) from None
