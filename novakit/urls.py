from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from novakit import health, staff
from novakit.api import api
from novakit.metrics import metrics_view

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("staff/", staff.dashboard, name="staff-dashboard"),
    path("admin/", admin.site.urls),
    path("portal/", include("novakit.portal_urls")),
    # Management API (DRF) first: its paths are distinct from the inference API's.
    path("api/v1/", include("accounts.urls")),
    path("api/v1/", include("billing.urls")),
    path("api/v1/", include("completions.urls")),
    path("api/v1/management/schema", SpectacularAPIView.as_view(), name="management-schema"),
    path("api/v1/", api.urls),
]
