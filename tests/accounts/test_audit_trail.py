"""Audit events are append-only: who did what stays on record."""

from __future__ import annotations

import pytest

from accounts.models import AuditEvent, Organization
from accounts.services import api_key_revoke, organization_create


def test_given_a_revocation_then_an_audit_event_names_the_actor_and_reason(tenant, admin_user):
    api_key_revoke(key=tenant.key, actor=admin_user, reason="leaked in a gist")

    event = AuditEvent.objects.get(action="api_key.revoke")
    assert (event.actor, event.organization, event.target, event.reason) == (
        admin_user, tenant.org, tenant.key.prefix, "leaked in a gist")


@pytest.mark.parametrize(
    "change",
    [
        lambda event: event.save(),
        lambda event: event.delete(),
        lambda event: AuditEvent.objects.filter(pk=event.pk).update(reason="nothing happened"),
        lambda event: AuditEvent.objects.filter(pk=event.pk).delete(),
        lambda event: AuditEvent.objects.bulk_update([event], ["reason"]),
    ],
    ids=["save", "delete", "bulk-update", "bulk-delete", "bulk-update-objects"],
)
def test_given_an_audit_event_when_edited_or_deleted_then_it_is_refused(tenant, change):
    event = AuditEvent.objects.filter(organization=tenant.org).first()
    original = (event.action, event.reason)
    event.reason = "rewritten"

    with pytest.raises(ValueError, match="append-only"):
        change(event)

    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.action, stored.reason) == original


def test_given_the_actor_is_deleted_then_the_event_stays_naming_no_one(tenant, admin_user):
    api_key_revoke(key=tenant.key, actor=admin_user, reason="rotation")

    admin_user.delete()

    event = AuditEvent.objects.get(action="api_key.revoke")
    assert (event.actor, event.reason) == (None, "rotation")


def test_given_an_organization_without_billing_history_then_it_can_still_be_deleted(db):
    org = organization_create(slug="typo-org")

    org.delete()

    assert not Organization.objects.filter(slug="typo-org").exists()
