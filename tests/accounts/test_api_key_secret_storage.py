"""Given a new API key, the database keeps only its prefix and HMAC, never the secret."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from accounts import keys
from accounts.models import APIKey
from accounts.services import api_key_create


def _every_text_value() -> list[tuple[str, str]]:
    """(table, value) for every string stored in every column of every table."""
    found: list[tuple[str, str]] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                found.extend((table, str(value)) for value in row if value is not None)
    return found


def _fragments(secret: str) -> list[str]:
    """The secret and overlapping 12-character pieces of its hidden part."""
    hidden = secret[keys.VISIBLE_PREFIX_LENGTH:]
    return [secret, hidden] + [hidden[i : i + 12] for i in range(0, len(hidden) - 12, 4)]


def test_given_a_new_key_when_created_then_the_secret_has_the_documented_format(tenant):
    _, secret = api_key_create(organization=tenant.org, name="format")

    assert re.fullmatch(r"sk_[A-Za-z0-9_-]{32,}", secret)
    # 32 random bytes, URL-safe base64: 43 characters after the prefix.
    assert len(secret) >= len("sk_") + 32


def test_given_two_keys_then_their_secrets_differ(tenant):
    _, first = api_key_create(organization=tenant.org, name="one")
    _, second = api_key_create(organization=tenant.org, name="two")

    assert first != second
    assert first[: keys.VISIBLE_PREFIX_LENGTH] != second[: keys.VISIBLE_PREFIX_LENGTH]


def test_given_a_new_key_then_only_its_prefix_and_hmac_are_stored(tenant):
    key, secret = api_key_create(organization=tenant.org, name="stored")

    row = APIKey.objects.get(pk=key.pk)
    assert row.prefix == secret[: keys.VISIBLE_PREFIX_LENGTH]
    expected = hmac.new(
        settings.API_KEY_HASH_SECRET.encode(), secret.encode(), hashlib.sha256
    ).hexdigest()
    assert row.key_hash == expected
    assert secret not in row.key_hash


def test_given_a_new_key_when_every_column_of_every_table_is_searched_then_the_secret_is_absent(
    tenant,
):
    _, secret = api_key_create(organization=tenant.org, name="searched")
    values = _every_text_value()

    # The search really covers the key's row: its prefix is there.
    assert any(secret[: keys.VISIBLE_PREFIX_LENGTH] == value for _, value in values)
    for fragment in _fragments(secret):
        leaks = [table for table, value in values if fragment in value]
        assert leaks == [], f"a fragment of the secret is stored in {leaks}"


def test_given_a_new_key_when_the_database_is_dumped_then_the_secret_is_absent(tenant):
    key, secret = api_key_create(organization=tenant.org, name="dumped")
    out = io.StringIO()

    call_command("dumpdata", stdout=out)
    dump = out.getvalue()

    assert key.prefix in dump  # the dump did include the key
    for fragment in _fragments(secret):
        assert fragment not in dump


@pytest.mark.django_db
def test_given_requests_with_a_secret_when_logged_at_debug_then_the_secret_is_not_logged(
    tenant, client, caplog
):
    caplog.set_level(logging.DEBUG)
    wrong = "sk_" + "x" * 43

    answers = [
        client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {tenant.secret}"),
        client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {wrong}"),
        client.get("/api/v1/credits", HTTP_AUTHORIZATION=f"Bearer {tenant.secret}"),
    ]

    assert [answer.status_code for answer in answers] == [200, 401, 200]

    assert tenant.secret not in caplog.text
    assert wrong not in caplog.text
