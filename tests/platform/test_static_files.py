"""Static files are served by the app itself, and no middleware sends requests through a thread."""

from __future__ import annotations

import pytest
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.test import AsyncClient
from django.utils.module_loading import import_string


@pytest.mark.parametrize("path", settings.MIDDLEWARE)
def test_every_middleware_runs_on_the_event_loop(path):
    # A sync-only middleware in Django's async stack sends every request, completions
    # included, into a thread and back (WhiteNoise 6's did: a fifth of the CPU per request).
    middleware = import_string(path)
    assert getattr(middleware, "async_capable", False) or iscoroutinefunction(middleware), path


async def test_the_portal_stylesheet_is_served_with_caching_headers(settings):
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = True
    client = AsyncClient()  # its handler builds the middleware with these settings

    response = await client.get("/static/portal/portal.css")

    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert b"{" in body and response["Content-Type"].startswith("text/css")
    assert "max-age" in response["Cache-Control"]


async def test_a_path_outside_static_goes_on_to_the_application(db):
    response = await AsyncClient().get("/healthz")

    assert response.status_code == 200
