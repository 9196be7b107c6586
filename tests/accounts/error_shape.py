"""The one error body every API surface answers with (novakit/errors.py)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse


def assert_error(response: HttpResponse, status: int, code: str) -> dict[str, Any]:
    """Assert `status` and the documented error shape with `code`; return the body."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body
