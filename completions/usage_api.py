"""Management API (DRF): usage totals and series of the caller's organization, from rollups."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.drf import caller_for
from accounts.models import APIKey
from accounts.scopes import USAGE_READ
from completions import selectors
from completions.models import UsageRollup
from novakit.errors import invalid_request, not_found
from novakit.inputs import column_bounds


class UsageQuery(serializers.Serializer):
    granularity = serializers.ChoiceField(choices=UsageRollup.Granularity.choices, default="day")
    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False)
    key_id = serializers.IntegerField(required=False, **column_bounds(UsageRollup, "key_id",
                                                                      minimum=1))
    model = serializers.CharField(required=False, max_length=200)


@extend_schema(
    parameters=[UsageQuery],
    responses={200: OpenApiResponse(description="totals, series, by_model, by_key")},
    summary="Usage from the rollups",
)
@api_view(["GET"])
def usage(request: Request) -> Response:
    caller = caller_for(request, scope=USAGE_READ)
    query = UsageQuery(data=request.query_params)
    query.is_valid(raise_exception=True)
    params = query.validated_data
    try:
        start, end = selectors.usage_range(granularity=params["granularity"],
                                           start=params.get("start"), end=params.get("end"))
    except selectors.UsageRangeError as exc:
        raise invalid_request(str(exc), param=exc.param) from exc
    report = selectors.usage_report(
        organization_id=caller.organization_id, granularity=params["granularity"], start=start,
        end=end, key_id=params.get("key_id"), model=params.get("model"),
    )
    prefixes = dict(APIKey.objects.filter(organization_id=caller.organization_id)
                    .values_list("pk", "prefix"))
    for row in report["by_key"]:
        row["key_prefix"] = prefixes.get(row["key_id"])
    return Response(report)


@extend_schema(responses={200: OpenApiResponse(description="the generation's receipt")},
               summary="Receipt of one generation")
@api_view(["GET"])
def generation(request: Request, generation_id: str) -> Response:
    caller = caller_for(request, scope=USAGE_READ)
    receipt = selectors.generation_receipt(organization_id=caller.organization_id,
                                           request_id=generation_id)
    if receipt is None:
        raise not_found(f"No generation '{generation_id}' in this organization")
    return Response(receipt)
