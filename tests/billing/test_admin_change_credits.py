"""The admin's "Grant or adjust credits" page: a ledger entry and an audit row, with a reason."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.urls import reverse

from accounts.models import AuditEvent
from billing.models import LedgerEntry


def url_for(tenant) -> str:  # type: ignore[no-untyped-def]
    return reverse("admin:billing_creditaccount_change_credits", args=[tenant.account.pk])


def test_given_the_account_page_then_it_links_to_the_change_credits_page(admin_client, tenant):
    page = admin_client.get(reverse("admin:billing_creditaccount_change",
                                    args=[tenant.account.pk]))

    assert page.status_code == 200
    assert url_for(tenant) in page.content.decode()
    form = admin_client.get(url_for(tenant))
    assert form.status_code == 200 and 'name="reason"' in form.content.decode()


def test_given_a_superuser_when_granting_then_a_ledger_entry_and_an_audit_event_name_them(
    admin_client, admin_user, tenant
):
    response = admin_client.post(url_for(tenant), {
        "kind": "grant", "amount": "5000", "reason": "conference promo",
    })

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:billing_creditaccount_change",
                                           args=[tenant.account.pk])
    entry = LedgerEntry.objects.filter(account=tenant.account).order_by("-id").first()
    assert (entry.kind, entry.amount, entry.reason, entry.actor) == (
        "grant", 5000, "conference promo", admin_user)
    assert tenant.refresh_account().balance == 1_005_000
    event = AuditEvent.objects.get(action="credits.grant", organization=tenant.org,
                                   actor=admin_user)
    assert event.reason == "conference promo"
    assert (event.before, event.after) == ({"balance": 1_000_000},
                                           {"balance": 1_005_000, "entry": entry.pk})


def test_given_a_superuser_when_adjusting_down_then_the_entry_is_negative(
    admin_client, admin_user, tenant
):
    admin_client.post(url_for(tenant), {
        "kind": "adjustment", "amount": "-250", "reason": "duplicate grant",
    })

    entry = LedgerEntry.objects.filter(account=tenant.account).order_by("-id").first()
    assert (entry.kind, entry.amount, entry.actor) == ("adjustment", -250, admin_user)
    assert AuditEvent.objects.filter(action="credits.adjustment", actor=admin_user,
                                     reason="duplicate grant").exists()


def test_given_an_empty_reason_then_the_form_refuses_and_nothing_changes(admin_client, tenant):
    for reason in ("", "   "):
        response = admin_client.post(url_for(tenant), {
            "kind": "grant", "amount": "5000", "reason": reason,
        })

        assert response.status_code == 200
        assert response.context["form"].errors["reason"] == ["This field is required."]
    assert LedgerEntry.objects.filter(account=tenant.account).count() == 1
    assert not AuditEvent.objects.filter(action__startswith="credits.").exclude(
        reason="test credits").exists()


def test_given_an_adjustment_beyond_the_balance_then_the_form_shows_the_refusal(
    admin_client, tenant
):
    response = admin_client.post(url_for(tenant), {
        "kind": "adjustment", "amount": "-2000000", "reason": "oops",
    })

    assert response.status_code == 200
    assert response.context["form"].errors["amount"] == ["Insufficient credits"]
    assert tenant.refresh_account().balance == 1_000_000


def test_given_a_non_staff_user_then_the_page_redirects_to_login_and_nothing_changes(
    client, tenant
):
    client.force_login(tenant.user)

    for response in (client.get(url_for(tenant)), client.post(url_for(tenant), {
        "kind": "grant", "amount": "5000", "reason": "let me in",
    })):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert LedgerEntry.objects.filter(account=tenant.account).count() == 1
    assert tenant.refresh_account().balance == 1_000_000


def test_given_staff_without_the_permission_then_credits_cannot_be_changed(client, tenant):
    staff = get_user_model().objects.create_user(username="support", password="x" * 20,
                                                 is_staff=True)
    client.force_login(staff)

    response = client.post(url_for(tenant), {
        "kind": "grant", "amount": "5000", "reason": "let me in",
    })

    assert response.status_code == 302
    assert LedgerEntry.objects.filter(account=tenant.account).count() == 1
