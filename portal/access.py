"""Who acts on a portal page: the signed-in member and the organization they act for.

Every portal page acts for one organization: the one chosen in the session
(the switcher), else the member's oldest membership, always among the active
organizations the user belongs to, so nobody can act for another by editing
the session or a form. `member_view` and `portal_render` serve every page.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.api import KEY_MANAGERS, MANAGERS
from accounts.drf import ORGANIZATION_SESSION_KEY
from accounts.models import Membership, Organization

__all__ = [
    "ORGANIZATION_SESSION_KEY",
    "PortalMember",
    "forbidden_page",
    "member_view",
    "optional_member",
    "portal_member",
    "portal_render",
    "secret_page",
]


@dataclass(frozen=True)
class PortalMember:
    """The signed-in user acting in one organization, and the others they could switch to."""

    membership: Membership
    memberships: tuple[Membership, ...]

    @property
    def organization(self) -> Organization:
        return self.membership.organization

    @property
    def role(self) -> str:
        return self.membership.role

    @property
    def can_manage_keys(self) -> bool:
        return self.role in KEY_MANAGERS

    @property
    def can_manage_members(self) -> bool:
        return self.role in MANAGERS

    @property
    def can_spend(self) -> bool:
        """Whether the playground may spend the organization's credits for this member."""
        return self.role in KEY_MANAGERS


def portal_member(user: AbstractBaseUser, chosen_organization_id: Any) -> PortalMember | None:
    """The member acting for `user`; None when they belong to no active organization."""
    memberships = tuple(
        Membership.objects.filter(user=user, organization__is_active=True)
        .select_related("organization").order_by("created_at", "pk")
    )
    if not memberships:
        return None
    chosen = next((m for m in memberships if str(m.organization_id) == str(chosen_organization_id)),
                  memberships[0])
    return PortalMember(membership=chosen, memberships=memberships)


PortalView = Callable[..., HttpResponse]


def member_view(*, roles: tuple[str, ...] | None = None) -> Callable[[PortalView], PortalView]:
    """Require a signed-in member (and one of `roles`); the view gets the `PortalMember` second."""

    def decorate(view: PortalView) -> PortalView:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            member = portal_member(request.user, request.session.get(ORGANIZATION_SESSION_KEY))
            if member is None:
                return render(request, "portal/no_organization.html", status=403)
            if roles is not None and member.role not in roles:
                return forbidden_page(request, member, "Your role in this organization "
                                      f"({member.role}) cannot do this.")
            return view(request, member, *args, **kwargs)

        return wrapper

    return decorate


def portal_render(request: HttpRequest, member: PortalMember | None, template: str,
                  context: dict[str, Any] | None = None, *, status: int = 200) -> HttpResponse:
    return render(request, template, {"member": member, **(context or {})}, status=status)


def forbidden_page(request: HttpRequest, member: PortalMember, message: str) -> HttpResponse:
    return portal_render(request, member, "portal/forbidden.html", {"message": message},
                         status=403)


def optional_member(request: HttpRequest) -> PortalMember | None:
    """For public pages: the member when someone is signed in, for the navigation."""
    if not request.user.is_authenticated:
        return None
    return portal_member(request.user, request.session.get(ORGANIZATION_SESSION_KEY))


def secret_page(request: HttpRequest, member: PortalMember, template: str,
                context: dict[str, Any]) -> HttpResponse:
    """The one page a new secret appears on, never stored by a cache."""
    response = portal_render(request, member, template, context)
    response["Cache-Control"] = "no-store"
    return response
