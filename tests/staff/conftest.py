"""Fixtures of the staff tests: a signed-in superuser."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model


@pytest.fixture
def staff_client(client):  # type: ignore[no-untyped-def]
    staff = get_user_model().objects.create_superuser("staff", "staff@example.test", "pw-staff-1")
    client.force_login(staff)
    return client
