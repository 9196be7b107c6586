from collections.abc import Callable

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views import defaults
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from billing.metrics import OpenReservationsCollector
from billing.views import stripe_webhook
from novakit import error_pages, health
from novakit.api import api
from novakit.errors import ApiError, error_response, invalid_request
from novakit.metrics import metrics_view
from portal.views import staff, staff_organization

# The admin's "View site" link: the portal is the site. Its header links the staff
# dashboard too (templates/admin/base_site.html).
admin.site.site_url = "/portal/"
admin.site.site_header = admin.site.site_title = "NovaKit admin"
admin.site.index_title = "Platform administration"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="portal:home"), name="root"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, {"scrape_collectors": [OpenReservationsCollector]},
         name="metrics"),
    path("staff/", staff.dashboard, name="staff-dashboard"),
    path("staff/organizations/<int:organization_id>/", staff_organization.organization_page,
         name="staff-organization"),
    path("webhooks/stripe", stripe_webhook, name="stripe-webhook"),
    path("admin/", admin.site.urls),
    path("portal/", include("portal.urls")),
    # Management API (DRF) first: its paths are distinct from the inference API's.
    path("api/v1/", include("accounts.urls")),
    path("api/v1/", include("billing.urls")),
    path("api/v1/", include("completions.urls")),
    path("api/v1/management/schema", SpectacularAPIView.as_view(), name="management-schema"),
    path("api/v1/", api.urls),
]


def _api_errors_as_json(default: Callable[..., HttpResponse], error: Callable[[], ApiError],
                        ) -> Callable[..., HttpResponse]:
    """Django's error page, or under /api/ the API's one JSON error shape (clients parse it)."""

    def view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if request.path.startswith("/api/"):
            return error_response(error())
        return default(request, exception)

    return view


# Errors Django raises before any view: an unknown path, a Host header not in ALLOWED_HOSTS.
handler404 = error_pages.page_not_found
handler400 = _api_errors_as_json(
    defaults.bad_request, lambda: invalid_request("Bad request (check the Host header)"))
