"""Management API (DRF) for an organization's webhook endpoints and their delivery attempts."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import webhooks
from accounts.api import MANAGERS
from accounts.drf import Caller, caller_for, data_list, request_actor
from accounts.models import Organization, WebhookDelivery, WebhookEndpoint
from accounts.scopes import KEYS_WRITE
from novakit.errors import forbidden, invalid_request


class EndpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "events", "is_active", "created_at"]


class EndpointCreatedSerializer(EndpointSerializer):
    """An endpoint as just registered: the one answer that carries its signing secret."""

    secret = serializers.CharField(read_only=True,
                                   help_text="shown once; the receiver verifies signatures with it")

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]


class EndpointWriteSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=500)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEndpoint.Event.choices), allow_empty=False
    )


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = ["id", "event", "status", "attempts", "last_status_code", "last_error",
                  "payload", "created_at", "delivered_at", "last_attempt_at", "next_attempt_at"]


def _manager(request: Request) -> Caller:
    caller = caller_for(request, scope=KEYS_WRITE)
    if caller.role is not None and caller.role not in MANAGERS:
        raise forbidden("Only owners and admins manage webhooks")
    return caller


def _endpoints(caller: Caller):  # type: ignore[no-untyped-def]
    return WebhookEndpoint.objects.filter(organization_id=caller.organization_id)


# `operation_id`s keep the ids of the `many=True` lists (the envelope hides that they list).
@extend_schema(methods=["GET"], operation_id="webhooks_list",
               responses=data_list(EndpointSerializer), summary="List webhook endpoints")
@extend_schema(methods=["POST"], request=EndpointWriteSerializer,
               responses={201: EndpointCreatedSerializer}, summary="Register a webhook endpoint")
@api_view(["GET", "POST"])
def endpoints(request: Request) -> Response:
    caller = _manager(request)
    if request.method == "GET":
        return Response({"data": EndpointSerializer(_endpoints(caller), many=True).data})
    payload = EndpointWriteSerializer(data=request.data)
    payload.is_valid(raise_exception=True)
    try:
        endpoint, secret = webhooks.webhook_endpoint_create(
            organization=Organization.objects.get(pk=caller.organization_id),
            url=payload.validated_data["url"], events=payload.validated_data["events"],
            actor=request_actor(request),
        )
    except ValueError as exc:
        raise invalid_request(str(exc), param="url") from exc
    body = EndpointSerializer(endpoint).data
    body["secret"] = secret  # shown once; the receiver verifies signatures with it
    return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(request=None, responses={204: OpenApiResponse(description="deleted")},
               summary="Delete a webhook endpoint")
@api_view(["DELETE"])
def endpoint_detail(request: Request, endpoint_id: int) -> Response:
    caller = _manager(request)
    endpoint = get_object_or_404(_endpoints(caller), pk=endpoint_id)
    webhooks.webhook_endpoint_delete(
        endpoint=endpoint, actor=request_actor(request))
    return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(responses={200: data_list(DeliverySerializer)},
               operation_id="webhooks_deliveries_list",
               summary="Recent delivery attempts of an endpoint")
@api_view(["GET"])
def endpoint_deliveries(request: Request, endpoint_id: int) -> Response:
    caller = _manager(request)
    endpoint = get_object_or_404(_endpoints(caller), pk=endpoint_id)
    deliveries = endpoint.deliveries.order_by("-created_at")[:100]
    return Response({"data": DeliverySerializer(deliveries, many=True).data})


@extend_schema(request=None, responses={202: DeliverySerializer},
               summary="Send a signed webhook.test event to an endpoint")
@api_view(["POST"])
def endpoint_test(request: Request, endpoint_id: int) -> Response:
    """Queued like any delivery, and listed with them; the answer is the delivery as it stands
    (without a broker the first attempt has been made already)."""
    caller = _manager(request)
    endpoint = get_object_or_404(_endpoints(caller).select_related("organization"),
                                 pk=endpoint_id)
    try:
        delivery = webhooks.webhook_test_send(endpoint=endpoint, actor=request_actor(request))
    except ValueError as exc:
        raise invalid_request(str(exc)) from exc
    delivery.refresh_from_db()
    return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(request=None, responses={202: DeliverySerializer},
               summary="Deliver a delivery's event again, as a new delivery")
@api_view(["POST"])
def delivery_redeliver(request: Request, endpoint_id: int, delivery_id: int) -> Response:
    """The same payload and event id, signed afresh; the original delivery is left as it was."""
    caller = _manager(request)
    endpoint = get_object_or_404(_endpoints(caller), pk=endpoint_id)
    delivery = get_object_or_404(endpoint.deliveries.select_related("endpoint"), pk=delivery_id)
    try:
        again = webhooks.webhook_redeliver(delivery=delivery, actor=request_actor(request))
    except ValueError as exc:
        raise invalid_request(str(exc)) from exc
    again.refresh_from_db()
    return Response(DeliverySerializer(again).data, status=status.HTTP_202_ACCEPTED)
