"""The management API's caller: an API key (automation) or a signed-in member (the portal),
and the schema helper its list endpoints share."""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.auth import KeyContext, authenticate_secret, parse_bearer
from accounts.models import Membership
from novakit.errors import forbidden, unauthorized

# The organization a signed-in member acts for: the portal's switcher writes it (portal/access.py).
ORGANIZATION_SESSION_KEY = "organization_id"


@dataclass(frozen=True)
class KeyPrincipal:
    """Stands in for `request.user` when an API key made the call."""

    context: KeyContext
    is_authenticated: bool = True
    is_staff: bool = False

    @property
    def pk(self) -> None:
        return None


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[KeyPrincipal, KeyContext] | None:
        header = request.headers.get("Authorization")
        if not header:
            return None  # let session authentication try
        context = authenticate_secret(parse_bearer(header), scope=None)
        return KeyPrincipal(context=context), context

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


@dataclass(frozen=True)
class Caller:
    """Who is calling, reduced to what authorization needs."""

    organization_id: int
    key: KeyContext | None
    role: str | None  # a member's role when signed in; None for API keys


def caller_for(request: Request, *, scope: str) -> Caller:
    """The caller's organization, refusing a key without `scope`.

    A session user acts in the organization chosen in their session (the
    portal's switcher), falling back to their first membership.
    """
    if isinstance(request.auth, KeyContext):
        if scope not in request.auth.scopes:
            raise forbidden(f"This API key lacks the '{scope}' scope")
        return Caller(organization_id=request.auth.organization_id, key=request.auth, role=None)
    user = request.user
    if user is None or not user.is_authenticated:
        raise unauthorized("Authentication required")
    memberships = Membership.objects.filter(user=user, organization__is_active=True)
    chosen = request.session.get(ORGANIZATION_SESSION_KEY) if hasattr(request, "session") else None
    membership = (memberships.filter(organization_id=chosen).first() if chosen else None) or (
        memberships.order_by("created_at").first()
    )
    if membership is None:
        raise forbidden("You are not a member of any active organization")
    return Caller(organization_id=membership.organization_id, key=None, role=membership.role)


def request_actor(request: Request) -> object | None:
    """The signed-in user behind a management request, or None when an API key made it."""
    return request.user if getattr(request.user, "pk", None) else None


def data_list(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    """The schema of a `{"data": [...]}` answer, the envelope the unpaginated lists use.

    For `@extend_schema(responses=...)` only; the views build the dict themselves.
    """
    name = serializer_class.__name__.removesuffix("Serializer")
    return inline_serializer(f"{name}List", fields={"data": serializer_class(many=True)})


class IsCaller(BasePermission):
    """Authentication is enforced per view through `caller_for`; this only requires someone."""

    def has_permission(self, request: Request, view: object) -> bool:
        return request.user is not None and bool(getattr(request.user, "is_authenticated", False))


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes API key authentication in the management API's OpenAPI schema."""

    target_class = "accounts.drf.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "sk_..."}
