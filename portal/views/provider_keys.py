"""Developer portal: the organization's own provider keys (bring your own key).

Every member sees which exist (never their secrets); owners and admins add and
remove them, through completions.own_keys.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_http_methods, require_POST

from accounts.api import MANAGERS
from completions.models import ProviderKey
from completions.own_keys import OwnKeyRefused, own_key_add, own_key_remove, providers_for_own_keys
from portal.access import PortalMember, forbidden_page, member_view, portal_render
from portal.forms import OwnProviderKeyForm


@require_http_methods(["GET", "POST"])
@member_view()
def provider_keys_page(request: HttpRequest, member: PortalMember) -> HttpResponse:
    form = OwnProviderKeyForm(request.POST if request.method == "POST" else None,
                              providers=providers_for_own_keys())
    if request.method == "POST":
        if not member.can_manage_members:
            return forbidden_page(request, member, "Only owners and admins manage provider keys.")
        if form.is_valid():
            try:
                key = own_key_add(organization=member.organization,
                                  provider=form.cleaned_data["provider"],
                                  label=form.cleaned_data["label"],
                                  secret=form.cleaned_data["secret"],
                                  actor=member.membership.user)
            except OwnKeyRefused as refused:
                form.add_error(None, str(refused))
            else:
                messages.success(request, f"Added {key.label} for {key.provider.name}: your "
                                          "requests to it use this key from now on.")
                return redirect("portal:provider-keys")
    keys = (ProviderKey.objects.filter(organization_id=member.membership.organization_id)
            .select_related("provider").order_by("provider__name", "label"))
    return portal_render(request, member, "portal/provider_keys.html", {
        "section": "provider-keys", "keys": keys, "form": form,
        "can_manage": member.can_manage_members, "fee_percent": settings.BYOK_FEE_PERCENT,
    })


@require_POST
@member_view(roles=MANAGERS)
def provider_key_remove(request: HttpRequest, member: PortalMember, key_id: int) -> HttpResponse:
    key = get_object_or_404(ProviderKey, pk=key_id,
                            organization_id=member.membership.organization_id)
    own_key_remove(key=key, actor=member.membership.user)
    messages.success(request, f"Removed {key.label}: the platform's keys serve your requests.")
    return redirect("portal:provider-keys")
