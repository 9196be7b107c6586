"""Quota changes reach every gateway process at its next request.

The gateway keeps an API key's quotas with its cached context (see
`billing.quotas.reservation_targets`); any change to a quota, however made
(the services, the admin, a migration), bumps the key cache's epoch once its
transaction commits, as revoking a key does.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.auth import key_cache_invalidate
from billing.models import Quota


@receiver(post_save, sender=Quota, dispatch_uid="billing.quota_saved")
@receiver(post_delete, sender=Quota, dispatch_uid="billing.quota_deleted")
def _quota_changed(**_: Any) -> None:
    transaction.on_commit(key_cache_invalidate)
