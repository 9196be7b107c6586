"""Developer portal: the organization's API keys, each new secret shown once.

A key's credit cap is set with the key, and a key is edited, by the same
services as the management API's (billing/key_caps.py). Revoked keys are
listed only on request (`?revoked=1`): they cannot work again.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import services
from accounts.api import KEY_MANAGERS
from accounts.models import APIKey
from accounts.new_secrets import secret_stash, secret_take
from billing.key_caps import (
    api_key_create_with_cap,
    api_key_rotate_with_quotas,
    api_key_update_with_cap,
)
from billing.services import key_credit_cap
from completions.models import CatalogModel
from portal.access import PortalMember, forbidden_page, member_view, portal_render, secret_page
from portal.forms import APIKeyEditForm, APIKeyForm, RotateForm


def _catalog_model_ids() -> list[str]:
    return list(CatalogModel.objects.filter(is_active=True).order_by("model_id")
                .values_list("model_id", flat=True))


def _organization_keys(member: PortalMember) -> Any:
    return (APIKey.objects.filter(organization_id=member.membership.organization_id)
            .select_related("created_by").prefetch_related("quotas")
            .order_by("revoked_at", "-created_at"))


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
            key, secret = api_key_create_with_cap(
                organization=member.organization, created_by=request.user,
                **form.service_arguments())
            secret_stash(request, _key_secret_name(key), secret)
            return redirect("portal:key-created", key_id=key.pk)
    now = timezone.now()
    listed = _organization_keys(member)
    revoked = listed.filter(revoked_at__lte=now)
    show_revoked = request.GET.get("revoked") == "1"
    if not show_revoked:  # a key in its rotation's grace period still works: it stays listed
        listed = listed.filter(Q(revoked_at__isnull=True) | Q(revoked_at__gt=now))
    rows = [{"key": key, "status": key.state(now), "credit_cap": key_credit_cap(key)}
            for key in listed]
    return portal_render(request, member, "portal/keys.html", {
        "section": "keys", "form": form, "rows": rows, "rotate_form": RotateForm(),
        "show_revoked": show_revoked, "revoked_count": revoked.count(),
    }, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@member_view(roles=KEY_MANAGERS)
def key_edit(request: HttpRequest, member: PortalMember, key_id: int) -> HttpResponse:
    """A key's name, limits, credit cap, models and expiry; saved as the API's PATCH saves them."""
    key = get_object_or_404(_organization_keys(member).select_related("organization"), pk=key_id)
    if key.revoked_at is not None:
        # Revoked, or rotated: its settings went to the new key, which is the one to edit.
        messages.error(request, f"{key.prefix}… is {key.state(timezone.now())}: "
                                "a revoked or rotated key cannot be edited.")
        return redirect("portal:keys")
    form = APIKeyEditForm(request.POST if request.method == "POST" else None, key=key,
                          credit_cap=key_credit_cap(key), model_ids=_catalog_model_ids())
    if request.method == "POST" and form.is_valid():
        changes = form.changes()
        if changes:
            api_key_update_with_cap(key=key, changes=changes, actor=request.user)
            changed = ", ".join(str(form[field].label).lower() for field in form.changed_data)
            messages.success(request, f"Saved {key.prefix}…: {changed}.")
        else:
            messages.info(request, f"Nothing changed on {key.prefix}….")
        return redirect("portal:keys")
    return portal_render(request, member, "portal/key_edit.html", {
        "section": "keys", "key": key, "form": form,
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
        new_key, secret = api_key_rotate_with_quotas(
            key=key, grace_seconds=form.cleaned_data["grace_seconds"], actor=request.user)
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
