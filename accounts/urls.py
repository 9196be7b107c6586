from django.urls import path

from accounts import api

urlpatterns = [
    path("keys", api.keys, name="keys"),
    path("keys/<int:key_id>", api.key_detail, name="key-detail"),
    path("keys/<int:key_id>/revoke", api.key_revoke, name="key-revoke"),
    path("keys/<int:key_id>/rotate", api.key_rotate, name="key-rotate"),
    path("members", api.members, name="members"),
    path("members/<int:member_id>", api.member_detail, name="member-detail"),
]
