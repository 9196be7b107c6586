"""Fixtures for the payments tests: the portal's signed-in members (a buyer is one) and its
headless browser."""

from tests.portal.conftest import (  # noqa: F401 (fixtures)
    _fast_password_hashing,
    browser,
    member_client,
)
