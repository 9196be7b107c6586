from django.urls import path

from accounts import api, webhooks_api

# The API keys' endpoints (/keys...) are billing's: billing/urls.py.
urlpatterns = [
    path("members", api.members, name="members"),
    path("members/<int:member_id>", api.member_detail, name="member-detail"),
    path("webhooks", webhooks_api.endpoints, name="webhooks"),
    path("webhooks/<int:endpoint_id>", webhooks_api.endpoint_detail, name="webhook-detail"),
    path("webhooks/<int:endpoint_id>/deliveries", webhooks_api.endpoint_deliveries,
         name="webhook-deliveries"),
    path("webhooks/<int:endpoint_id>/test", webhooks_api.endpoint_test, name="webhook-test"),
    path("webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver",
         webhooks_api.delivery_redeliver, name="webhook-redeliver"),
]
