"""Management API for credits (DRF): balance, quotas and the ledger of the caller's organization."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.drf import caller_for
from accounts.scopes import BILLING_READ
from billing import selectors
from billing.models import LedgerEntry


class LedgerEntrySerializer(serializers.ModelSerializer):
    # None for entries no key caused (grants, purchases, adjustments).
    api_key_prefix = serializers.CharField(source="api_key.prefix", default=None, allow_null=True)

    class Meta:
        model = LedgerEntry
        fields = ["id", "kind", "amount", "balance_after", "request_id", "api_key_prefix",
                  "reason", "created_at"]


class QuotaUsageSerializer(serializers.Serializer):
    metric = serializers.CharField()
    scope = serializers.CharField()
    key_prefix = serializers.CharField(allow_null=True)
    period = serializers.CharField()
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    reserved = serializers.IntegerField()
    remaining = serializers.IntegerField()
    resets_at = serializers.CharField(allow_null=True)


class CreditSummarySerializer(serializers.Serializer):
    balance = serializers.IntegerField()
    reserved = serializers.IntegerField()
    available = serializers.IntegerField()
    debt = serializers.IntegerField(
        help_text="Credits owed for a refunded or disputed payment; the next credits repay it")
    currency = serializers.CharField()
    quotas = QuotaUsageSerializer(many=True)


@extend_schema(responses={200: CreditSummarySerializer}, summary="Credits and quotas")
@api_view(["GET"])
def credits(request: Request) -> Response:
    caller = caller_for(request, scope=BILLING_READ)
    return Response(selectors.credit_summary(organization_id=caller.organization_id))


# What `PageNumberPagination.get_paginated_response` answers. A function view has no
# `pagination_class` for drf-spectacular to find, so the page is described here.
PAGINATED_LEDGER = inline_serializer("PaginatedLedgerEntryList", fields={
    "count": serializers.IntegerField(),
    "next": serializers.URLField(allow_null=True),
    "previous": serializers.URLField(allow_null=True),
    "results": LedgerEntrySerializer(many=True),
})


@extend_schema(
    parameters=[OpenApiParameter("page", OpenApiTypes.INT, description="page number, from 1")],
    responses={200: PAGINATED_LEDGER},
    operation_id="credits_ledger_list",  # as drf-spectacular names a paginated list
    summary="Ledger, newest first",
)
@api_view(["GET"])
def ledger(request: Request) -> Response:
    caller = caller_for(request, scope=BILLING_READ)
    paginator = PageNumberPagination()
    entries = selectors.ledger_entries(organization_id=caller.organization_id).select_related(
        "api_key"
    )
    page = paginator.paginate_queryset(entries, request)
    return paginator.get_paginated_response(LedgerEntrySerializer(page, many=True).data)
