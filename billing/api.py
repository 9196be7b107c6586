"""Management API for credits (DRF): balance, quotas and the ledger of the caller's organization."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
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
    api_key_prefix = serializers.CharField(source="api_key.prefix", default=None)

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
    currency = serializers.CharField()
    quotas = QuotaUsageSerializer(many=True)


@extend_schema(responses={200: CreditSummarySerializer}, summary="Credits and quotas")
@api_view(["GET"])
def credits(request: Request) -> Response:
    caller = caller_for(request, scope=BILLING_READ)
    return Response(selectors.credit_summary(organization_id=caller.organization_id))


@extend_schema(responses={200: LedgerEntrySerializer(many=True)}, summary="Ledger, newest first")
@api_view(["GET"])
def ledger(request: Request) -> Response:
    caller = caller_for(request, scope=BILLING_READ)
    paginator = PageNumberPagination()
    entries = selectors.ledger_entries(organization_id=caller.organization_id).select_related(
        "api_key"
    )
    page = paginator.paginate_queryset(entries, request)
    return paginator.get_paginated_response(LedgerEntrySerializer(page, many=True).data)
