from django.urls import path

from billing import api, keys_api

urlpatterns = [
    path("keys", keys_api.keys, name="keys"),
    path("keys/<int:key_id>", keys_api.key_detail, name="key-detail"),
    path("keys/<int:key_id>/revoke", keys_api.key_revoke, name="key-revoke"),
    path("keys/<int:key_id>/rotate", keys_api.key_rotate, name="key-rotate"),
    path("credits", api.credits, name="credits"),
    path("credits/ledger", api.ledger, name="credits-ledger"),
]
