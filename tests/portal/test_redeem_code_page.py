"""The billing page's redeem form and the admin's code pages (billing/codes.py behind both)."""

from __future__ import annotations

import re

import pytest

from accounts.models import Membership
from billing.codes import code_create
from billing.models import RedemptionCode

pytestmark = pytest.mark.django_db

BILLING = "/portal/billing/"
REDEEM = "/portal/billing/redeem/"


def test_an_owner_redeems_a_code_and_sees_the_credits_arrive(owner, tenant):
    _, shown = code_create(credits=2_500)
    before = tenant.refresh_account().balance

    response = owner.post(REDEEM, {"code": shown}, follow=True)

    assert response.redirect_chain[-1][0] == BILLING
    page = response.content.decode()
    assert "Redeemed: 2,500 credits were added." in page
    assert tenant.refresh_account().balance == before + 2_500
    assert "redemption code NOVA-" in page  # the ledger entry, by the code's prefix
    assert shown not in page


def test_a_code_redeemed_twice_is_refused_with_a_message_and_granted_once(owner, tenant):
    _, shown = code_create(credits=100)
    owner.post(REDEEM, {"code": shown})
    balance = tenant.refresh_account().balance

    page = owner.post(REDEEM, {"code": shown}, follow=True).content.decode()

    assert "Your organization has already redeemed this code." in page
    assert tenant.refresh_account().balance == balance


def test_a_developer_or_viewer_sees_no_form_and_cannot_redeem(member_client, tenant):
    _, shown = code_create(credits=100)
    for role in (Membership.Role.DEVELOPER, Membership.Role.VIEWER):
        client = member_client(role)
        assert 'id="redeem"' not in client.get(BILLING).content.decode()
        assert client.post(REDEEM, {"code": shown}).status_code == 403
    assert RedemptionCode.objects.get().uses == 0


def test_staff_make_a_code_in_the_admin_and_see_it_once(admin_client, owner, tenant):
    response = admin_client.post("/admin/billing/redemptioncode/add/", {
        "credits": 750, "max_uses": 3, "expires_at_0": "", "expires_at_1": "",
        "note": "conference", "change_reason": "conference give-away",
    }, follow=True)

    assert response.status_code == 200, response.content.decode()[:2000]
    shown = re.search(r'id="redemption-code"[^>]*>([A-Z0-9-]+)<', response.content.decode())
    assert shown, response.content.decode()[:3000]
    assert "no-store" in response["Cache-Control"]
    code = RedemptionCode.objects.get()
    # Reloading the page is a GET: no second code, and the code is not shown again.
    reloaded = admin_client.get(response.redirect_chain[-1][0]).content.decode()
    assert 'id="redemption-code-gone"' in reloaded and shown.group(1) not in reloaded
    assert RedemptionCode.objects.count() == 1
    assert (code.credits, code.max_uses, code.note) == (750, 3, "conference")
    listing = admin_client.get("/admin/billing/redemptioncode/").content.decode()
    change = admin_client.get(f"/admin/billing/redemptioncode/{code.pk}/change/").content.decode()
    assert code.prefix in listing
    assert shown.group(1) not in listing + change
    # The code works, once, for the organization it was given to.
    owner.post(REDEEM, {"code": shown.group(1)})
    code.refresh_from_db()
    assert code.uses == 1
