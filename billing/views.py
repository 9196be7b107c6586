"""Stripe's webhook endpoint (README "Payments"): a thin door to billing.stripe_events."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.stripe_events import EventRefused, NotYet, stripe_event_receive

logger = logging.getLogger(__name__)


@csrf_exempt  # Stripe signs its deliveries; a browser's session plays no part
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    try:
        outcome = stripe_event_receive(payload=request.body,
                                       signature=request.headers.get("Stripe-Signature"))
    except NotYet as early:
        logger.info("a Stripe event arrived before the payment it reverses was granted (%s): "
                    "asking Stripe to send it again later", early)
        return JsonResponse({"error": {"message": "Not ready for this event yet; send it again",
                                       "type": "api_error", "code": "retry_later"}}, status=503)
    except EventRefused as refused:
        logger.warning("refused a Stripe webhook delivery from %s: %s",
                       request.META.get("REMOTE_ADDR", "?"), refused)
        return JsonResponse({"error": {"message": str(refused), "type": "invalid_request_error",
                                       "code": "invalid_signature"}}, status=400)
    return JsonResponse({"received": True, "outcome": outcome})
