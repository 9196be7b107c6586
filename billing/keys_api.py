"""Management API (DRF) for the API keys of the caller's organization, with their credit caps.

Here rather than in accounts because a key's credit cap is a billing quota
(billing/key_caps.py writes a key and its cap together, for this API and the
portal's keys page alike). Every lookup is filtered by the caller's
organization, so another organization's key is a 404, never a 403 and never
its data.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import services
from accounts.api import KEY_MANAGERS
from accounts.drf import Caller, caller_for, data_list, request_actor
from accounts.models import APIKey, Organization
from accounts.scopes import ALL_SCOPES, KEYS_WRITE
from billing.key_caps import (
    CREDIT_CAP_BOUNDS,
    api_key_create_with_cap,
    api_key_rotate_with_quotas,
    api_key_update_with_cap,
)
from billing.services import key_credit_cap
from novakit.errors import forbidden, invalid_request
from novakit.inputs import column_bounds


class APIKeySerializer(serializers.ModelSerializer):
    # None for keys an API key created: there is no user behind them.
    created_by = serializers.CharField(source="created_by.username", default=None, read_only=True,
                                       allow_null=True)
    credit_cap = serializers.SerializerMethodField()

    class Meta:
        model = APIKey
        fields = ["id", "name", "prefix", "scopes", "allowed_models", "requests_per_minute",
                  "tokens_per_minute", "max_concurrent_requests", "credit_cap", "expires_at",
                  "revoked_at", "created_by", "created_at", "last_used_at"]

    def get_credit_cap(self, key: APIKey) -> int | None:
        return key_credit_cap(key)


class APIKeyCreatedSerializer(APIKeySerializer):
    """A key as just created: the one answer that carries its secret."""

    secret = serializers.CharField(read_only=True,
                                   help_text="shown this once; only its hash is stored")

    class Meta(APIKeySerializer.Meta):
        fields = [*APIKeySerializer.Meta.fields, "secret"]


class ReplacedKeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prefix = serializers.CharField()
    stops_working_at = serializers.DateTimeField(allow_null=True)


class APIKeyRotatedSerializer(APIKeyCreatedSerializer):
    """The new key of a rotation, with its secret and the key it replaces."""

    replaces = ReplacedKeySerializer(read_only=True)

    class Meta(APIKeySerializer.Meta):
        fields = [*APIKeyCreatedSerializer.Meta.fields, "replaces"]


class APIKeyWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ALL_SCOPES),
                                   allow_empty=False, required=False)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=200),
                                           required=False)
    # Bounded by what their columns hold: beyond it the database refuses the write.
    requests_per_minute = serializers.IntegerField(
        **column_bounds(APIKey, "requests_per_minute", minimum=1), allow_null=True,
        required=False)
    tokens_per_minute = serializers.IntegerField(
        **column_bounds(APIKey, "tokens_per_minute", minimum=1), allow_null=True, required=False)
    max_concurrent_requests = serializers.IntegerField(
        **column_bounds(APIKey, "max_concurrent_requests", minimum=1), allow_null=True,
        required=False)
    credit_cap = serializers.IntegerField(
        **CREDIT_CAP_BOUNDS, allow_null=True, required=False,
        help_text="credits this key may spend per month")
    expires_at = serializers.DateTimeField(allow_null=True, required=False)


class RevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(default="", allow_blank=True,
                                   help_text="kept in the audit log (its first 500 characters)")


class RotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(min_value=0, max_value=30 * 86400, default=3600)


def _key_manager(request: Request) -> Caller:
    caller = caller_for(request, scope=KEYS_WRITE)
    # Every member may read the key list (viewers too, as in the portal); only
    # key managers may change it.
    reading = request.method in ("GET", "HEAD", "OPTIONS")
    if caller.role is not None and caller.role not in KEY_MANAGERS and not reading:
        raise forbidden("Your role cannot manage API keys")
    return caller


def _check_scopes_grantable(caller: Caller, scopes: list[str] | None) -> None:
    """A key may not mint a key with more power than it has itself."""
    if caller.key is not None and scopes is not None:
        extra = set(scopes) - set(caller.key.scopes)
        if extra:
            lacking = ", ".join(sorted(extra))
            raise forbidden(f"This API key cannot grant scopes it lacks: {lacking}")


def _actor_label(caller: Caller) -> str:
    return f"api key {caller.key.key_prefix}" if caller.key else ""


def _keys(caller: Caller):  # type: ignore[no-untyped-def]
    return APIKey.objects.filter(organization_id=caller.organization_id).select_related(
        "created_by").prefetch_related("quotas")


# `operation_id` keeps the id a list of `many=True` had (`keys_list`); the envelope hides
# from drf-spectacular that this is a list.
@extend_schema(methods=["GET"], operation_id="keys_list", responses=data_list(APIKeySerializer),
               summary="List API keys")
@extend_schema(methods=["POST"], request=APIKeyWriteSerializer,
               responses={201: APIKeyCreatedSerializer}, summary="Create an API key")
@api_view(["GET", "POST"])
def keys(request: Request) -> Response:
    caller = _key_manager(request)
    if request.method == "GET":
        return Response({"data": APIKeySerializer(_keys(caller), many=True).data})
    payload = APIKeyWriteSerializer(data=request.data)
    payload.is_valid(raise_exception=True)
    data = dict(payload.validated_data)
    _check_scopes_grantable(caller, data.get("scopes"))
    organization = Organization.objects.get(pk=caller.organization_id)
    key, secret = api_key_create_with_cap(
        organization=organization, created_by=request_actor(request),
        actor_label=_actor_label(caller), **data,
    )
    body = APIKeySerializer(_keys(caller).get(pk=key.pk)).data
    body["secret"] = secret  # shown this once; only its hash is stored
    return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(
    request=APIKeyWriteSerializer,
    responses={200: APIKeySerializer},
    summary="Read or change an API key",
)
@api_view(["GET", "PATCH"])
def key_detail(request: Request, key_id: int) -> Response:
    caller = _key_manager(request)
    key = get_object_or_404(_keys(caller), pk=key_id)
    if request.method == "GET":
        return Response(APIKeySerializer(key).data)
    payload = APIKeyWriteSerializer(data=request.data, partial=True)
    payload.is_valid(raise_exception=True)
    changes = dict(payload.validated_data)
    _check_scopes_grantable(caller, changes.get("scopes"))
    try:
        api_key_update_with_cap(key=key, changes=changes, actor=request_actor(request),
                                actor_label=_actor_label(caller))
    except ValueError as exc:
        raise invalid_request(str(exc)) from exc
    return Response(APIKeySerializer(_keys(caller).get(pk=key.pk)).data)


@extend_schema(request=RevokeSerializer, responses={200: APIKeySerializer},
               summary="Revoke an API key")
@api_view(["POST"])
def key_revoke(request: Request, key_id: int) -> Response:
    caller = _key_manager(request)
    key = get_object_or_404(_keys(caller).select_related("organization"), pk=key_id)
    # Parsed, not `request.data.get(...)`: a JSON body that is not an object has no `.get`.
    payload = RevokeSerializer(data=request.data)
    payload.is_valid(raise_exception=True)
    services.api_key_revoke(key=key, actor=request_actor(request), actor_label=_actor_label(caller),
                            reason=payload.validated_data["reason"][:500])
    return Response(APIKeySerializer(_keys(caller).get(pk=key.pk)).data)


@extend_schema(
    request=RotateSerializer,
    responses={201: APIKeyRotatedSerializer},
    summary="Rotate an API key",
)
@api_view(["POST"])
def key_rotate(request: Request, key_id: int) -> Response:
    caller = _key_manager(request)
    key = get_object_or_404(_keys(caller).select_related("organization"), pk=key_id)
    payload = RotateSerializer(data=request.data)
    payload.is_valid(raise_exception=True)
    try:
        new_key, secret = api_key_rotate_with_quotas(
            key=key, grace_seconds=payload.validated_data["grace_seconds"],
            actor=request_actor(request), actor_label=_actor_label(caller),
        )
    except ValueError as exc:
        raise invalid_request(str(exc)) from exc
    body = APIKeySerializer(_keys(caller).get(pk=new_key.pk)).data
    body["secret"] = secret
    body["replaces"] = {"id": key.pk, "prefix": key.prefix,
                        "stops_working_at": key.revoked_at.isoformat() if key.revoked_at else None}
    return Response(body, status=status.HTTP_201_CREATED)
