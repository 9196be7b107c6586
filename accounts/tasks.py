"""Background jobs of the accounts app: webhook deliveries and key-expiry notices."""

from __future__ import annotations

from accounts import webhooks
from novakit.celery import app


@app.task(time_limit=60, soft_time_limit=50)
def webhook_deliver_task(delivery_id: int) -> str:
    """One attempt; a failure is retried by `webhook_retries_due_task` when it is due."""
    return webhooks.webhook_deliver(delivery_id=delivery_id).status


@app.task(time_limit=300, soft_time_limit=240)
def webhook_retries_due_task() -> int:
    """Every few seconds (beat, or the in-process beat without a broker): send due retries."""
    return webhooks.webhook_retries_due()


@app.task(time_limit=300, soft_time_limit=240)
def keys_expiring_notify_task() -> int:
    from accounts.services import api_keys_expiring_notify

    return api_keys_expiring_notify()
