"""The URLs of the inference API: what the inference handler resolves against
(novakit/runtime/inference.py) and, with `NOVAKIT_PROCESS=inference`, the whole
URLconf of an inference process.

Resolving a completion's path against this short list instead of the whole
site's (portal, admin, management API) saves Django's resolver a walk
through every other pattern on each request. Its API paths are the ones
`settings.INFERENCE_PATH_PREFIXES` sends to that handler; anything else is a
404 in the API's error shape, as from the full URLconf under /api/. It
imports nothing of the portal, the admin or the management API, so an
inference process never loads them.
"""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from novakit import health
from novakit.api import api
from novakit.errors import error_response, invalid_request, not_found
from novakit.metrics import metrics_view

urlpatterns = [
    path("api/v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(not_found())


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(invalid_request("Bad request (check the Host header)"))
