"""Developer portal: sign-up, the organization switcher, the overview, the password reset.

Views are thin: parse a form, check the role, call a service, render.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.views import PasswordResetConfirmView
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import slugify
from django.views.decorators.http import require_http_methods, require_POST

from accounts import services
from accounts.models import APIKey, Membership, Organization
from accounts.signin_throttle import signin_lockout_lift
from billing.selectors import credit_summary
from billing.services import account_for_organization, credits_grant
from completions import selectors as usage
from completions.examples import example_model
from portal.access import (
    ORGANIZATION_SESSION_KEY,
    PortalMember,
    forbidden_page,
    member_view,
    portal_render,
)
from portal.forms import SignUpForm


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
