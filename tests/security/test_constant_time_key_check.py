"""Given a presented API key, then its HMAC is compared with the stored one by
`hmac.compare_digest`, whose answer alone decides: an `==` in its place fails these tests."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from accounts import keys
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db


class RecordingHmac:
    """Stands in for the `hmac` module in accounts/keys.py: records compare_digest's calls and
    may overrule its answer; everything else is the real module."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.forced: bool | None = None

    def compare_digest(self, a: Any, b: Any) -> bool:
        answer = hmac.compare_digest(a, b)
        self.calls.append((a, b, answer))
        return answer if self.forced is None else self.forced

    def __getattr__(self, name: str) -> Any:
        return getattr(hmac, name)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> RecordingHmac:
    stand_in = RecordingHmac()
    monkeypatch.setattr(keys, "hmac", stand_in)
    return stand_in


def _stored_hash(tenant: Tenant) -> str:
    tenant.key.refresh_from_db()
    return tenant.key.key_hash


# The inference API (async, ninja) and the management API (sync, DRF) check keys apart.
PATHS = ["/api/v1/models", "/api/v1/keys"]


@pytest.mark.parametrize("path", PATHS)
def test_the_right_key_is_compared_in_constant_time(tenant, client, recorder, path):
    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")

    assert response.status_code == 200
    assert (keys.hash_secret(tenant.secret), _stored_hash(tenant), True) in recorder.calls


@pytest.mark.parametrize("path", PATHS)
def test_a_wrong_key_with_the_right_prefix_is_compared_in_constant_time(
        tenant, client, recorder, path):
    wrong = tenant.secret[:-1] + ("A" if tenant.secret[-1] != "A" else "B")

    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {wrong}")

    assert response.status_code == 401
    assert (keys.hash_secret(wrong), _stored_hash(tenant), False) in recorder.calls


@pytest.mark.parametrize("path", PATHS)
def test_compare_digests_answer_is_the_one_that_counts(tenant, client, recorder, path):
    recorder.forced = False  # as if the hashes differed

    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")

    assert response.status_code == 401
    assert recorder.calls, "the key was not checked with compare_digest"
