"""The Celery app. With no REDIS_URL, tasks run eagerly in the caller (settings)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "novakit.settings")

app = Celery("novakit")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
