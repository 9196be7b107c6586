"""The project package: settings, wiring, and the machinery under the apps.

The Celery app (`novakit.celery`) is not imported here, as Django's Celery
recipe does: every process would then load Celery and kombu (~10 MB), the
inference workers included, which only ever enqueue a webhook delivery now
and then. Each app's tasks module defines its tasks on that app
(`@app.task`), so whoever enqueues one has loaded it, and `celery -A novakit`
finds it as `novakit.celery`.
"""
