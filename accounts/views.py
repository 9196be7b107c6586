"""Developer portal: sign-up, the organization switcher, the overview, API keys and members.

Every portal page acts for one organization: the one chosen in the session
(the switcher), else the member's oldest membership, always among the active
organizations the user belongs to, so nobody can act for another by editing
the session or a form. Views are thin: parse a form, check the role, call a
service, render. The helpers here (`member_view`, `portal_render`) serve the
billing and completions pages too.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.views import PasswordResetConfirmView, redirect_to_login
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import services
from accounts.api import KEY_MANAGERS, MANAGERS
from accounts.emails import send_invitation
from accounts.forms import APIKeyForm, InviteForm, RoleForm, RotateForm, SignUpForm
from accounts.models import APIKey, Membership, Organization
from accounts.new_secrets import secret_stash, secret_take
from accounts.signin_throttle import signin_lockout_lift
from billing.selectors import credit_summary
from billing.services import (
    account_for_organization,
    credits_grant,
    key_credit_cap,
    key_credit_cap_set,
    key_quotas_copy,
)
from completions import selectors as usage
from completions.examples import example_model
from completions.models import CatalogModel

# The session key the switcher writes; the management API's session callers read it too.
ORGANIZATION_SESSION_KEY = "organization_id"


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


# --- sign-up and the switcher -------------------------------------------------------------


def _free_slug(name: str) -> str:
    base = slugify(name)[:48] or "org"
    if not Organization.objects.filter(slug=base).exists():
        return base
    return f"{base}-{secrets.token_hex(3)}"


@transaction.atomic
def _sign_up(*, email: str, password: str, organization: str
             ) -> tuple[AbstractBaseUser, Organization]:
    user = get_user_model().objects.create_user(username=email, email=email, password=password)
    for _ in range(5):
        try:
            # organization_create is atomic: a nested savepoint, so a slug taken
            # between our check and the insert rolls back only that attempt.
            org = services.organization_create(slug=_free_slug(organization), name=organization,
                                               actor=user, actor_label="portal sign-up")
            break
        except IntegrityError:
            continue
    else:  # pragma: no cover - five random suffixes taken in a row
        raise RuntimeError("could not find a free organization slug")
    services.membership_add(organization=org, user=user, role=Membership.Role.OWNER)
    if settings.PORTAL_SIGNUP_CREDITS:
        credits_grant(account=account_for_organization(organization=org),
                      amount=settings.PORTAL_SIGNUP_CREDITS, reason="sign-up credits", actor=user,
                      actor_label="portal sign-up", idempotency_key=f"signup-{org.pk}")
    return user, org


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("portal:home")
    form = SignUpForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            user, org = _sign_up(**form.cleaned_data)
        except IntegrityError:  # the same email signed up a moment ago, in another request
            form.add_error("email", "An account with this email exists: sign in instead.")
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[ORGANIZATION_SESSION_KEY] = org.pk
            messages.success(request, f"Welcome! {org.name} starts with "
                                      f"{settings.PORTAL_SIGNUP_CREDITS:,} credits.")
            return redirect("portal:keys")
    return render(request, "portal/signup.html", {"form": form, "member": None,
                                                  "credits": settings.PORTAL_SIGNUP_CREDITS})


class PasswordResetConfirm(PasswordResetConfirmView):
    """Django's, except that setting the new password also lifts the user's sign-in
    lockout, as the lockout page promises."""

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)  # saves the new password
        signin_lockout_lift(user=form.user)
        return response


@require_POST
@member_view()
def organization_switch(request: HttpRequest, member: PortalMember) -> HttpResponse:
    wanted = request.POST.get("organization_id", "")
    chosen = next((m for m in member.memberships if str(m.organization_id) == wanted), None)
    if chosen is None:  # not one of theirs: the same answer as a missing one
        return forbidden_page(request, member, "You are not a member of that organization.")
    request.session[ORGANIZATION_SESSION_KEY] = chosen.organization_id
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = ""
    return redirect(target or "portal:home")


@member_view()
def home(request: HttpRequest, member: PortalMember) -> HttpResponse:
    organization_id = member.membership.organization_id
    start, end = usage.usage_range(granularity="day", start=None, end=None)
    totals = usage.usage_totals(organization_id=organization_id, granularity="day", start=start,
                                end=end)
    now = timezone.now()
    active_keys = APIKey.objects.filter(organization_id=organization_id).exclude(
        revoked_at__lte=now).exclude(expires_at__lte=now).count()
    return portal_render(request, member, "portal/home.html", {
        "section": "home",
        "credits": credit_summary(organization_id=organization_id),
        "totals": totals,
        "active_keys": active_keys,
        "base_url": request.build_absolute_uri("/api/v1"),
        "example": example_model(),
    })


# --- API keys ------------------------------------------------------------------------------


def _catalog_model_ids() -> list[str]:
    return list(CatalogModel.objects.filter(is_active=True).order_by("model_id")
                .values_list("model_id", flat=True))


def _organization_keys(member: PortalMember) -> Any:
    return (APIKey.objects.filter(organization_id=member.membership.organization_id)
            .select_related("created_by").prefetch_related("quotas")
            .order_by("revoked_at", "-created_at"))


def _key_status(key: APIKey, now: dt.datetime) -> str:
    if key.revoked_at is not None:
        return "revoked" if key.revoked_at <= now else "rotating"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def secret_page(request: HttpRequest, member: PortalMember, template: str,
                context: dict[str, Any]) -> HttpResponse:
    """The one page a new secret appears on, never stored by a cache."""
    response = portal_render(request, member, template, context)
    response["Cache-Control"] = "no-store"
    return response


def _key_secret_name(key: APIKey) -> str:
    return f"key:{key.pk}"


@require_http_methods(["GET", "POST"])
@member_view()
def keys(request: HttpRequest, member: PortalMember) -> HttpResponse:
    model_ids = _catalog_model_ids()
    form = APIKeyForm(request.POST if request.method == "POST" else None, model_ids=model_ids)
    if request.method == "POST":
        if not member.can_manage_keys:
            return forbidden_page(request, member, "Viewers cannot create API keys.")
        if form.is_valid():
            organization = member.organization
            with transaction.atomic():
                key, secret = services.api_key_create(
                    organization=organization, created_by=request.user,
                    **form.service_arguments())
                cap = form.cleaned_data.get("credit_cap")
                if cap is not None:
                    key_credit_cap_set(key=key, limit=cap, actor=request.user)
            secret_stash(request, _key_secret_name(key), secret)
            return redirect("portal:key-created", key_id=key.pk)
    now = timezone.now()
    rows = [{"key": key, "status": _key_status(key, now), "credit_cap": key_credit_cap(key)}
            for key in _organization_keys(member)]
    return portal_render(request, member, "portal/keys.html", {
        "section": "keys", "form": form, "rows": rows, "rotate_form": RotateForm(),
    }, status=400 if form.errors else 200)


@require_POST
@member_view(roles=KEY_MANAGERS)
def key_revoke(request: HttpRequest, member: PortalMember, key_id: int) -> HttpResponse:
    key = get_object_or_404(_organization_keys(member).select_related("organization"), pk=key_id)
    if services.api_key_revoke(key=key, actor=request.user, reason="revoked in the portal"):
        messages.success(request, f"Revoked {key.prefix}…: it stops working at once.")
    else:
        messages.info(request, f"{key.prefix}… was already revoked.")
    return redirect("portal:keys")


@require_POST
@member_view(roles=KEY_MANAGERS)
def key_rotate(request: HttpRequest, member: PortalMember, key_id: int) -> HttpResponse:
    key = get_object_or_404(_organization_keys(member).select_related("organization"), pk=key_id)
    form = RotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose how long the old key keeps working.")
        return redirect("portal:keys")
    try:
        with transaction.atomic():
            new_key, secret = services.api_key_rotate(
                key=key, grace_seconds=form.cleaned_data["grace_seconds"], actor=request.user)
            key_quotas_copy(old=key, new=new_key, actor=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
        return redirect("portal:keys")
    secret_stash(request, _key_secret_name(new_key), secret, replaces=key.pk)
    return redirect("portal:key-created", key_id=new_key.pk)


@require_GET
@member_view(roles=KEY_MANAGERS)
def key_created(request: HttpRequest, member: PortalMember, key_id: int) -> HttpResponse:
    """The new key's secret, once: the page the create and rotate forms redirect to."""
    key = get_object_or_404(_organization_keys(member), pk=key_id)
    new = secret_take(request, _key_secret_name(key))
    if new is None:  # a reload, or another session
        messages.info(request, f"The secret of {key.prefix}… was shown once and cannot be "
                               "shown again: if it is lost, rotate the key.")
        return redirect("portal:keys")
    replaces = (_organization_keys(member).filter(pk=new["replaces"]).first()
                if new.get("replaces") else None)
    return secret_page(request, member, "portal/key_created.html", {
        "section": "keys", "key": key, "secret": new["secret"], "replaces": replaces,
        "base_url": request.build_absolute_uri("/api/v1"),
    })


# --- members -----------------------------------------------------------------------------


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
