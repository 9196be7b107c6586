"""Hostile input to the real gateway: every such request gets a clear 4xx in the one error shape,
never a 5xx, and nothing is reserved, charged or sent upstream for it.

All of it goes over real HTTP to the live ASGI server (uvicorn), as a client would send it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from billing.models import Reservation
from completions.models import UsageRecord
from tests.accounts.error_shape import assert_error
from tests.conftest import Tenant
from tests.support.live_server import LiveGateway

HELLO = [{"role": "user", "content": "Hello!"}]
JSON = "application/json"


class _Answer:
    """An httpx response read the way `assert_error` reads a Django response."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content = response.content
        self._response = response

    def __getitem__(self, header: str) -> str:
        return self._response.headers[header]

    def json(self) -> Any:
        return self._response.json()


@pytest.fixture
def http(live_gateway: LiveGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_gateway.api_base, timeout=30) as client:
        yield client


@pytest.fixture
def books(tenant: Tenant, fake_upstream: Any) -> Iterator[None]:
    """After the test: the tenant's credits untouched, nothing reserved, recorded or relayed."""
    before = tenant.refresh_account().balance
    yield
    account = tenant.refresh_account()
    assert account.balance == before
    assert account.reserved == 0
    assert not Reservation.objects.exists()
    assert not UsageRecord.objects.exists()
    assert fake_upstream.requests == []


def _post(http: httpx.Client, tenant: Tenant, content: bytes | Iterator[bytes], *,
          content_type: str | None = JSON, **headers: str) -> httpx.Response:
    sent = {"Authorization": f"Bearer {tenant.secret}", **headers}
    if content_type is not None:
        sent["Content-Type"] = content_type
    return http.post("/chat/completions", content=content, headers=sent)


def _refused(response: httpx.Response, status: int = 400, code: str = "invalid_request"
             ) -> dict[str, Any]:
    body = assert_error(_Answer(response), status, code)  # type: ignore[arg-type]
    assert "Traceback" not in response.text
    return body


def _nested(depth: int, leaf: str = "0") -> bytes:
    return b"[" * depth + leaf.encode() + b"]" * depth


# --- size ----------------------------------------------------------------------------------

LIMIT = 64 * 1024


@pytest.fixture
def small_limit(settings: Any) -> int:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    return LIMIT


def _over_the_limit() -> bytes:
    return orjson.dumps({"messages": [{"role": "user", "content": "word " * (LIMIT // 4)}]})


def test_a_body_over_the_limit_with_its_length_declared_is_413(
    tenant, http, books, small_limit
):
    response = _post(http, tenant, _over_the_limit())

    body = _refused(response, 413, "request_too_large")
    assert str(LIMIT) in body["error"]["message"]


def test_a_chunked_body_over_the_limit_without_a_length_is_413(tenant, http, books, small_limit):
    whole = _over_the_limit()
    pieces = (whole[start:start + 8192] for start in range(0, len(whole), 8192))

    response = _post(http, tenant, pieces)

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    body = _refused(response, 413, "request_too_large")
    assert str(LIMIT) in body["error"]["message"]


def test_a_chunked_body_under_the_limit_is_served(tenant, http, fake_upstream, small_limit):
    whole = orjson.dumps({"messages": HELLO, "max_tokens": 5})

    response = _post(http, tenant, iter([whole[:10], whole[10:]]))

    assert response.status_code == 200, response.text
    assert len(fake_upstream.requests) == 1


def test_a_huge_messages_array_is_400_naming_messages(tenant, http, books):
    content = orjson.dumps({"messages": [{"role": "user", "content": "x"}] * 100_000})

    body = _refused(_post(http, tenant, content))

    assert body["error"]["param"] == "messages"


def test_an_oversize_authorization_header_is_refused_in_the_error_shape(tenant, http, books):
    response = http.post("/chat/completions", content=orjson.dumps({"messages": HELLO}),
                         headers={"Authorization": "Bearer sk_" + "A" * 60_000,
                                  "Content-Type": JSON})

    _refused(response, 401, "unauthorized")


# --- nesting -------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [150, 300, 5_000, 100_000])
def test_deeply_nested_json_in_a_field_is_400(tenant, http, books, depth):
    # 150 and 300 parse, but orjson, which writes the upstream request, stops at 255 levels;
    # 5 000 and 100 000 are past what Python's decoder can recurse into.
    content = b'{"messages": ' + orjson.dumps(HELLO) + b', "tools": ' + _nested(depth) + b"}"

    body = _refused(_post(http, tenant, content))

    assert "nested" in body["error"]["message"]


def test_a_body_that_is_only_deep_nesting_is_400(tenant, http, books):
    body = _refused(_post(http, tenant, _nested(100_000)))

    assert "nested" in body["error"]["message"]


def test_moderate_nesting_in_a_passthrough_field_is_relayed(tenant, http, fake_upstream):
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(10):
        schema = {"type": "object", "properties": {"inner": schema}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]

    response = _post(http, tenant, orjson.dumps({"messages": HELLO, "tools": tools,
                                                 "max_tokens": 5}))

    assert response.status_code == 200, response.text
    assert fake_upstream.requests[-1]["body"]["tools"] == tools


# --- encoding and media type ----------------------------------------------------------------

@pytest.mark.parametrize("content", [
    b'{"messages": [{"role": "user", "content": "\xff\xfe bad bytes"}]}',
    b'\xef\xbb\xbf{"messages": [{"role": "user", "content": "a byte-order mark"}]}',
    b'{"messages": [{"role": "user", "content": "nul\x00inside"}]}',
], ids=["invalid-utf8", "bom", "raw-nul"])
def test_bytes_that_are_not_utf8_json_are_400(tenant, http, books, content):
    _refused(_post(http, tenant, content))


def test_a_lone_surrogate_escape_is_400_naming_its_field(tenant, http, books):
    content = b'{"messages": [{"role": "user", "content": "\\ud800"}]}'

    body = _refused(_post(http, tenant, content))

    assert body["error"]["param"] == "messages.0.content"


def test_an_escaped_null_character_is_relayed_like_any_character(tenant, http, fake_upstream):
    response = _post(http, tenant, b'{"messages": [{"role": "user", "content": "a\\u0000b"}],'
                                   b' "max_tokens": 5}')

    assert response.status_code == 200, response.text
    assert fake_upstream.requests[-1]["body"]["messages"][0]["content"] == "a\x00b"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
def test_a_json_body_without_a_json_content_type_is_415(tenant, http, books, content_type):
    response = _post(http, tenant, orjson.dumps({"messages": HELLO}), content_type=content_type)

    body = _refused(response, 415, "unsupported_media_type")
    assert "application/json" in body["error"]["message"]


def test_a_form_encoded_body_is_415(tenant, http, books):
    response = http.post("/chat/completions", data={"messages": "hello", "model": "x"},
                         headers={"Authorization": f"Bearer {tenant.secret}"})

    _refused(response, 415, "unsupported_media_type")


def test_a_json_content_type_with_a_charset_is_served(tenant, http, fake_upstream):
    response = _post(http, tenant, orjson.dumps({"messages": HELLO, "max_tokens": 5}),
                     content_type="application/json; charset=utf-8")

    assert response.status_code == 200, response.text


# --- shape of the JSON ------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    b"[1, 2]", b'"a string"', b"null", b"42", b"true", b"[]", b"{}",
    b'[{"messages": [{"role": "user", "content": "hi"}]}]',
])
def test_a_body_that_is_not_a_chat_request_object_is_400(tenant, http, books, content):
    _refused(_post(http, tenant, content))


@pytest.mark.parametrize("content", [
    b'{"messages": [{"role": "user", "content": "hi"}], "model": "a", "model": "b"}',
    b'{"messages": [{"role": "user", "content": "hi", "content": "again"}]}',
    b'{"messages": [], "messages": [{"role": "user", "content": "hi"}]}',
])
def test_duplicate_keys_are_400_naming_the_key(tenant, http, books, content):
    body = _refused(_post(http, tenant, content))

    assert "repeats" in body["error"]["message"]
    assert body["error"]["param"] in ("model", "content", "messages")


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_numbers_json_does_not_have_are_400(tenant, http, books, constant):
    content = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + constant + b"}"

    _refused(_post(http, tenant, content))


# --- absurd values and wrong types ---------------------------------------------------------

@pytest.mark.parametrize("raw", [b"-1", b"0", b"1" + b"0" * 30, b"-1" + b"0" * 30, b"1.5",
                                 b"1e300", b'"100"', b'"lots"', b"true", b"[100]",
                                 b'{"n": 100}'])  # null is allowed: OpenAI's spec makes it nullable
def test_an_absurd_max_tokens_is_400_naming_it(tenant, http, books, raw):
    # Written by hand: 10**30 is no 64-bit integer, and no JSON library would write it.
    content = b'{"messages": ' + orjson.dumps(HELLO) + b', "max_tokens": ' + raw + b"}"

    body = _refused(_post(http, tenant, content))

    assert body["error"]["param"] == "max_tokens"


# A value of the wrong type for every field of the request and of a message.
WRONG_TYPES = [
    ("messages", {"role": "user"}), ("messages", "Hello"), ("messages", 1), ("messages", [1]),
    ("model", 5), ("model", ["openai/gpt-4o-mini"]), ("model", None), ("model", ""),
    ("temperature", "0.5"), ("temperature", True), ("temperature", [1]),
    ("top_p", "1"), ("top_p", False), ("frequency_penalty", "0"), ("presence_penalty", {}),
    # (`null` is allowed for the fields OpenAI's spec makes nullable: temperature, top_p,
    # max_tokens, stop, stream; tests/completions/test_parameters.py)
    ("stream", "true"), ("stream", 1), ("web_search", "on"), ("web_search", 0),
    ("stop", 7), ("stop", [1, 2]), ("stop", {"a": 1}), ("user", 42), ("user", ["u"]),
    ("stream_options", "yes"), ("stream_options", [1]), ("plugins", "web"), ("plugins", [1]),
]
WRONG_MESSAGE_TYPES = [
    ("role", 1), ("role", None), ("role", "wizard"), ("content", 42), ("content", {"a": 1}),
    ("content", [1]), ("content", [{"no": "type"}]), ("images", "https://x.test/a.png"),
    ("images", [1]), ("images", ["file:///etc/passwd"]), ("name", 7), ("name", "n" * 300),
]


@pytest.mark.parametrize(("name", "value"), WRONG_TYPES)
def test_a_wrong_type_in_any_field_is_400_naming_it(tenant, http, books, name, value):
    body = _refused(_post(http, tenant, orjson.dumps({"messages": HELLO, name: value})))

    assert (body["error"]["param"] or "").split(".")[0] == name


@pytest.mark.parametrize(("name", "value"), WRONG_MESSAGE_TYPES)
def test_a_wrong_type_in_any_message_field_is_400_naming_it(tenant, http, books, name, value):
    message = {"role": "user", "content": "hi", name: value}

    body = _refused(_post(http, tenant, orjson.dumps({"messages": [message]})))

    assert (body["error"]["param"] or "").startswith("messages.0")


def test_a_null_byte_in_the_model_name_is_404_not_a_crash(tenant, http, books):
    response = _post(http, tenant, orjson.dumps({"messages": HELLO, "model": "openai/\x00gpt"}))

    _refused(response, 404, "model_not_found")


def test_a_null_byte_in_the_end_user_id_is_400(tenant, http, books):
    # The id is stored with the usage record; PostgreSQL text cannot hold NUL.
    response = _post(http, tenant, orjson.dumps({"messages": HELLO, "user": "end\x00user"}))

    body = _refused(response)
    assert body["error"]["param"] == "user"


# --- headers -----------------------------------------------------------------------------------

def _raw_request(gateway: LiveGateway, head: bytes, body: bytes) -> bytes:
    """Send bytes no HTTP client library would send; return the whole answer."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as connection:
        connection.sendall(head + b"\r\n" + body)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _head(tenant: Tenant, body: bytes, extra: bytes) -> bytes:
    return (b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + tenant.secret.encode() + b"\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra)


@pytest.mark.parametrize("header", [
    b"Idempotency-Key: key\nX-Injected: yes\r\n",     # a bare LF inside a line
    b"Idempotency-Key: key\rX-Injected: yes\r\n",     # a bare CR inside a line
    b"Idempotency-Key: key\r\n X-Injected: yes\r\n",  # an obsolete folded continuation line
    b"X-Request-ID: id\x00X-Injected: yes\r\n",       # a NUL byte
    b"Idempotency-Key: caf\xc3\xa9\r\n",              # bytes outside ASCII
    b"Idempotency-Key: \x7f\r\n",                     # a control character
])
def test_a_header_with_injected_control_bytes_is_refused(live_gateway, tenant, books, header):
    body = orjson.dumps({"messages": HELLO})

    answer = _raw_request(live_gateway, _head(tenant, body, header), body)

    head, _, content = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    assert b"x-injected" not in head.lower()
    if b"application/json" in head.lower():
        # The application saw the request: its refusal is in the error shape. A request the
        # HTTP server itself cannot parse is refused by uvicorn (a plain 400) before any
        # application code runs, and cannot be answered in it.
        assert orjson.loads(content)["error"]["param"] == "Idempotency-Key"


@pytest.mark.parametrize("value", ["k" * 10_000, "tab\there", ""])
def test_an_idempotency_key_that_is_too_long_or_not_printable_is_400(tenant, http, books, value):
    response = http.post("/chat/completions", content=orjson.dumps({"messages": HELLO}),
                         headers={"Authorization": f"Bearer {tenant.secret}",
                                  "Content-Type": JSON, "Idempotency-Key": value})

    body = _refused(response)
    assert body["error"]["param"] == "Idempotency-Key"


@pytest.mark.parametrize("value", ["x" * 10_000, "id <script>", "id;evil=1", "../../etc"])
def test_a_hostile_request_id_is_never_echoed(tenant, http, fake_upstream, value):
    response = http.get("/models", headers={"Authorization": f"Bearer {tenant.secret}",
                                            "X-Request-ID": value})

    assert response.status_code == 200
    assert response.headers["x-request-id"] != value
    assert len(response.headers["x-request-id"]) <= 64


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/chat/completions", "POST"), ("DELETE", "/chat/completions", "POST"),
    ("PUT", "/chat/completions/quote", "POST"), ("POST", "/models", "GET"),
])
def test_a_wrong_method_is_405_in_the_error_format(tenant, http, books, method, path, allowed):
    response = http.request(method, path, headers={"Authorization": f"Bearer {tenant.secret}"})

    body = _refused(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allowed
    assert method in body["error"]["message"]


def test_the_bare_api_root_is_404_in_the_error_format(tenant, http):
    response = http.get("/", headers={"Authorization": f"Bearer {tenant.secret}"})

    _refused(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/chat/completions", "/keys"])
def test_a_host_header_not_allowed_is_400_in_the_error_format(tenant, http, books, path):
    response = http.post(path, content=orjson.dumps({"messages": HELLO}), headers={
        "Authorization": f"Bearer {tenant.secret}", "Content-Type": "application/json",
        "Host": "attacker.example"})

    body = _refused(response, 400, "invalid_request")
    assert "Host" in body["error"]["message"]
