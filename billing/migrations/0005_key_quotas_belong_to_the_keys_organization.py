"""A quota on a key belongs to the key's organization.

Before Quota.clean checked it, the admin accepted an organization together with
another organization's key: that organization's billing page then showed the
other tenant's key, while the quota counted the key's own requests. The quota was
set for the key, so it moves to the key's organization; the audit rows keep
what staff entered.
"""

from django.db import migrations
from django.db.models import F


def realign(apps, schema_editor):  # type: ignore[no-untyped-def]
    Quota = apps.get_model("billing", "Quota")
    mismatched = (Quota.objects.filter(api_key__isnull=False)
                  .exclude(organization_id=F("api_key__organization_id")))
    for quota in mismatched.select_related("api_key"):
        quota.organization_id = quota.api_key.organization_id
        quota.save(update_fields=["organization"])


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_quota_holds_name_their_metric")]

    operations = [migrations.RunPython(realign, migrations.RunPython.noop)]
