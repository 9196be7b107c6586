"""Fixtures for the payments tests: a buyer (an owner signed in to the portal, with the fake
Stripe configured), the portal's members and its headless browser."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client

from accounts.models import Membership
from tests.portal.conftest import (  # noqa: F401 (fixtures)
    _fast_password_hashing,
    browser,
    member_client,
)
from tests.support.fake_stripe import FakeStripe


@pytest.fixture
def buyer(fake_stripe: FakeStripe, member_client: Callable[..., Client]) -> Client:  # noqa: F811
    return member_client(Membership.Role.OWNER)
