"""Periodic jobs of the billing app. Thin: each calls a service and is safe to run twice."""

from __future__ import annotations

from novakit.celery import app


@app.task(time_limit=300, soft_time_limit=240)
def low_balance_alerts_task() -> int:
    from billing.alerts import low_balance_scan

    return low_balance_scan()


@app.task(time_limit=300, soft_time_limit=240)
def auto_recharge_task() -> int:
    from billing.recharge import auto_recharge_scan

    return auto_recharge_scan()
