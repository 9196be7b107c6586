"""Developer portal: the organization's members, their roles and invitations."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_http_methods, require_POST

from accounts import services
from accounts.api import MANAGERS
from accounts.emails import send_invitation
from accounts.models import Membership
from portal.access import PortalMember, forbidden_page, member_view, portal_render
from portal.forms import InviteForm, RoleForm


def _organization_members(member: PortalMember) -> Any:
    return (Membership.objects.filter(organization_id=member.membership.organization_id)
            .select_related("user").order_by("created_at", "pk"))


@require_http_methods(["GET", "POST"])
@member_view()
def members(request: HttpRequest, member: PortalMember) -> HttpResponse:
    form = InviteForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if not member.can_manage_members:
            return forbidden_page(request, member, "Only owners and admins manage members.")
        if form.is_valid():
            try:
                membership, is_new = services.membership_invite(
                    organization=member.organization, email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"], actor=request.user)
            except ValueError as exc:
                form.add_error("email", str(exc))
            else:
                transaction.on_commit(lambda: send_invitation(
                    membership=membership, is_new_user=is_new, request=request))
                messages.success(request, f"Invited {membership.user.email} as {membership.role}.")
                return redirect("portal:members")
    return portal_render(request, member, "portal/members.html", {
        "section": "members", "form": form, "people": _organization_members(member),
        "roles": Membership.Role.choices,
    }, status=400 if form.errors else 200)


@require_POST
@member_view(roles=MANAGERS)
def member_role(request: HttpRequest, member: PortalMember, member_id: int) -> HttpResponse:
    membership = get_object_or_404(_organization_members(member), pk=member_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a role.")
        return redirect("portal:members")
    try:
        services.membership_set_role(membership=membership, role=form.cleaned_data["role"],
                                     actor=request.user)
    except ValueError as exc:
        messages.error(request, f"Not changed: {exc}.")
    else:
        messages.success(request, f"{membership.user} is now {membership.role}.")
    return redirect("portal:members")


@require_POST
@member_view(roles=MANAGERS)
def member_remove(request: HttpRequest, member: PortalMember, member_id: int) -> HttpResponse:
    membership = get_object_or_404(_organization_members(member), pk=member_id)
    try:
        services.membership_remove(membership=membership, actor=request.user)
    except ValueError as exc:
        messages.error(request, f"Not removed: {exc}.")
    else:
        messages.success(request, f"Removed {membership.user} from {member.organization.name}.")
    return redirect("portal:members")
