"""Background jobs of the accounts app: webhook deliveries and key-expiry notices."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from accounts import webhooks
from novakit.celery import app

# Without a broker (eager mode) there is no one to run a retry later: try a
# few times at once, then give up.
_EAGER_ATTEMPTS = 3


@app.task(bind=True, max_retries=8, time_limit=60, soft_time_limit=50)
def webhook_deliver_task(self, delivery_id: int) -> str:  # type: ignore[no-untyped-def]
    attempts = _EAGER_ATTEMPTS if self.request.is_eager else 1
    for attempt in range(attempts):
        try:
            return webhooks.webhook_deliver(delivery_id=delivery_id).status
        except webhooks.DeliveryFailed as exc:
            if self.request.is_eager:
                if attempt == attempts - 1:
                    webhooks.webhook_give_up(delivery_id=delivery_id)
                    return "failed"
                continue
            if self.request.retries >= self.max_retries:
                webhooks.webhook_give_up(delivery_id=delivery_id)
                return "failed"
            # Exponential backoff: 10 s, 20 s, 40 s ... capped at an hour.
            countdown = min(3600, 10 * 2 ** self.request.retries)
            webhooks.webhook_retry_scheduled(
                delivery_id=delivery_id, at=timezone.now() + dt.timedelta(seconds=countdown))
            raise self.retry(exc=exc, countdown=countdown) from exc
    return "failed"


@app.task(time_limit=300, soft_time_limit=240)
def keys_expiring_notify_task() -> int:
    from accounts.services import api_keys_expiring_notify

    return api_keys_expiring_notify()
