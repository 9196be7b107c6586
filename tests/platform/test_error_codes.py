"""The error-code table (novakit/errors.py): every code has its status and OpenAI type,
and what the APIs answer carries them."""

from __future__ import annotations

from typing import get_args

import orjson
import pytest
from rest_framework.test import APIClient

from novakit.errors import ERRORS, ApiError, ErrorCode, code_for_status, error_response
from tests.accounts.error_shape import assert_error
from tests.conftest import Tenant

# The public contract's codes and their statuses (the API reference's error table).
CONTRACT = {
    "invalid_request": 400,
    "unauthorized": 401,
    "quota_exceeded": 402,
    "forbidden": 403,
    "rate_limited": 429,
    "server_error": 500,
}
OPENAI_TYPES = {
    "invalid_request_error", "authentication_error", "permission_error", "insufficient_quota",
    "rate_limit_error", "server_error", "upstream_error",
}


def test_every_code_has_an_error_status_and_an_openai_type():
    assert set(ERRORS) == set(get_args(ErrorCode))
    for code, kind in ERRORS.items():
        assert 400 <= kind.status <= 599, code
        assert kind.type in OPENAI_TYPES, code


def test_the_contract_codes_have_the_contract_statuses():
    assert {code: ERRORS[code].status for code in CONTRACT} == CONTRACT


def test_a_status_has_at_most_one_generic_code_and_maps_back_to_it():
    generic = {code: kind.status for code, kind in ERRORS.items() if kind.generic}
    assert len(set(generic.values())) == len(generic)
    for code, status in generic.items():
        assert code_for_status(status) == code
    # 422 only ever means a reused Idempotency-Key: a framework's 422 is not one.
    assert code_for_status(422) == "invalid_request"
    assert code_for_status(418) == "invalid_request"
    assert code_for_status(599) == "server_error"


@pytest.mark.parametrize("code", list(ERRORS))
def test_a_response_carries_the_status_and_type_of_its_code(code: ErrorCode):
    response = error_response(ApiError(code, "why", param="field"))

    assert response.status_code == ERRORS[code].status
    assert response["Content-Type"] == "application/json"
    body = orjson.loads(response.content)
    assert body["code"] == code
    assert body["error"] == {"message": "why", "type": ERRORS[code].type, "code": code,
                             "param": "field"}


def test_an_unknown_code_is_refused_when_the_error_is_built():
    with pytest.raises(KeyError):
        ApiError("no_such_code", "why")  # type: ignore[arg-type]


@pytest.mark.django_db
def test_the_inference_api_answers_with_the_table(tenant: Tenant, client):
    unknown = client.get("/api/v1/models/acme/nothing",
                         HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")
    anonymous = client.get("/api/v1/models")

    for response, code in ((unknown, "model_not_found"), (anonymous, "unauthorized")):
        body = assert_error(response, ERRORS[code].status, code)
        assert body["error"]["type"] == ERRORS[code].type


@pytest.mark.django_db
def test_the_management_api_answers_with_the_table(tenant: Tenant):
    caller = APIClient()
    caller.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")

    anonymous = APIClient().get("/api/v1/keys")
    wrong_method = caller.put("/api/v1/keys")

    for response, code in ((anonymous, "unauthorized"), (wrong_method, "method_not_allowed")):
        body = assert_error(response, ERRORS[code].status, code)
        assert body["error"]["type"] == ERRORS[code].type
