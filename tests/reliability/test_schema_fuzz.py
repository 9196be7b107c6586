"""Fuzz both APIs from their own OpenAPI schemas: whatever schemathesis sends, the answer is
never a 5xx, a documented answer matches its schema, and every error is in the one error shape.

The schemas are fetched from the live gateway (the real ASGI server under uvicorn); the requests
go to it over real HTTP with a real API key holding every scope; completions go to the fake
upstream. Every operation is fuzzed with valid data (schemathesis' positive mode) and with data
that breaks the schema (negative mode: wrong types, missing fields, out-of-range values).

Hypothesis runs derandomized, so a run is reproducible; the example counts keep the file well
under 90 s on two cores. A failure lists every operation that failed, with a curl command to
replay it.

Why the operations are driven through `as_strategy` and not `schemathesis.pytest`: the pytest
plugin of schemathesis 4 reads `Function._nodeid`, which pytest 9.2 no longer has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from accounts.services import api_key_create
from billing.models import Reservation
from tests.conftest import Tenant

# Per operation and generation mode. The inference API has 4 operations, the management one 18.
INFERENCE_EXAMPLES = 40
MANAGEMENT_EXAMPLES = 12


def error_in_the_one_shape(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                           case: schemathesis.Case) -> bool | None:
    """Every 4xx and 5xx answer is `{"error": {message, type, param, code}, "code": ...}`."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), (
        f"a {response.status_code} that is not JSON ({content_type}): {response.text[:300]!r}")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["code"] == body["error"]["code"], body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return True


# `response_schema_conformance` validates a documented answer against its schema; an answer
# whose status or content type the schema does not document has nothing to validate against,
# and for those `error_in_the_one_shape` is the contract. `status_code_conformance` is left
# out: neither schema lists its error statuses (the reference documents them once, for all).
CHECKS = [not_a_server_error, response_schema_conformance, error_in_the_one_shape]


def _fuzz(schema: schemathesis.BaseSchema, *, examples: int, secret: str,
          prepare: Callable[[schemathesis.Case], None] = lambda case: None) -> list[str]:
    """Run every operation in both generation modes; return what failed, one line each."""
    headers = {"Authorization": f"Bearer {secret}"}
    problems: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate],  # no shrinking against a server
                      suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                prepare(case)
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except (AssertionError, BaseExceptionGroup) as exc:
                problems.append(f"{operation.label} [{mode.value}]: {exc}")
    return problems


def _load(live_gateway: Any, path: str) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict({"base-url": live_gateway.url})
    return schemathesis.openapi.from_url(f"{live_gateway.api_base}{path}", config=config)


def test_inference_api_answers_any_input_without_a_server_error(
    live_gateway, tenant: Tenant, fake_upstream
) -> None:
    schema = _load(live_gateway, "/openapi.json")
    assert {op.ok().label for op in schema.get_all_operations()} >= {
        "POST /api/v1/chat/completions", "GET /api/v1/models"}

    problems = _fuzz(schema, examples=INFERENCE_EXAMPLES, secret=tenant.secret)

    assert not problems, "\n\n".join(problems)
    assert fake_upstream.requests, "no fuzzed completion reached the (fake) upstream"
    assert not Reservation.objects.filter(status=Reservation.Status.OPEN).exists()


def test_management_api_answers_any_input_without_a_server_error(
    live_gateway, tenant: Tenant
) -> None:
    schema = _load(live_gateway, "/management/schema?format=json")
    # Keys the fuzzer may revoke, rotate and edit: its own key is never one of them, so it
    # stays signed in throughout.
    spare = [api_key_create(organization=tenant.org, name=f"spare {n}", scopes=["chat"],
                            created_by=tenant.user)[0].pk for n in range(3)]

    def aim_at_real_keys(case: schemathesis.Case) -> None:
        key_id = (case.path_parameters or {}).get("key_id")
        if isinstance(key_id, int) and (key_id == tenant.key.pk or key_id % 2 == 0):
            case.path_parameters["key_id"] = spare[key_id % len(spare)]

    problems = _fuzz(schema, examples=MANAGEMENT_EXAMPLES, secret=tenant.secret,
                     prepare=aim_at_real_keys)

    assert not problems, "\n\n".join(problems)
