"""Fixtures for the management API tests: callers by API key (with chosen scopes) or by session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from rest_framework.test import APIClient

from accounts.services import api_key_create, membership_add
from tests.conftest import Tenant


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2's deliberate slowness (about a second per password) would dominate these tests.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def key_client() -> Callable[..., APIClient]:
    """A client calling with `tenant`'s key (`scopes` given: a new key with just those)."""

    def make(tenant: Tenant, scopes: tuple[str, ...] | None = None) -> APIClient:
        secret = tenant.secret
        if scopes is not None:
            _, secret = api_key_create(organization=tenant.org, name="scoped", scopes=scopes)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


@pytest.fixture
def person() -> Callable[..., AbstractBaseUser]:
    """A user who is a member of `tenant`'s organization with `role`."""

    def make(tenant: Tenant, role: str, name: str | None = None) -> AbstractBaseUser:
        email = f"{name or role}@{tenant.org.slug}.test"
        user = get_user_model().objects.create_user(username=email, email=email,
                                                    password="a-long-test-password")
        membership_add(organization=tenant.org, user=user, role=role)
        return user

    return make


@pytest.fixture
def session_client() -> Callable[..., APIClient]:
    """A client signed in as `user` (the portal's way in), acting for `organization_id` if given."""

    def make(user: AbstractBaseUser, organization_id: int | None = None,
             enforce_csrf_checks: bool = False) -> APIClient:
        client = APIClient(enforce_csrf_checks=enforce_csrf_checks)
        client.force_login(user)
        if organization_id is not None:
            session = client.session
            session["organization_id"] = organization_id
            session.save()
        return client

    return make
