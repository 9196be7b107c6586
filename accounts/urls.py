from django.urls import path

from accounts import api, webhooks_api

urlpatterns = [
    path("keys", api.keys, name="keys"),
    path("keys/<int:key_id>", api.key_detail, name="key-detail"),
    path("keys/<int:key_id>/revoke", api.key_revoke, name="key-revoke"),
    path("keys/<int:key_id>/rotate", api.key_rotate, name="key-rotate"),
    path("members", api.members, name="members"),
    path("members/<int:member_id>", api.member_detail, name="member-detail"),
    path("webhooks", webhooks_api.endpoints, name="webhooks"),
    path("webhooks/<int:endpoint_id>", webhooks_api.endpoint_detail, name="webhook-detail"),
    path("webhooks/<int:endpoint_id>/deliveries", webhooks_api.endpoint_deliveries,
         name="webhook-deliveries"),
]
