"""Request ids on every log line, and JSON logs for production.

The middleware takes the caller's `X-Request-ID` (when it looks sane) or makes
one, keeps it in a context variable for the request's whole life (it follows
the request into `sync_to_async` threads), and echoes it in the response.
The gateway replaces it with the completion's id once it has one, so a log
line, a usage record and a receipt can be matched.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def set_request_id(value: str) -> None:
    request_id_var.set(value)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestIdMiddleware:
    async_capable = True
    sync_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _start(self, request: HttpRequest) -> None:
        incoming = request.headers.get("X-Request-ID", "")
        request_id_var.set(incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        self._start(request)
        response = self.get_response(request)
        response.headers.setdefault("X-Request-ID", request_id_var.get())
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        self._start(request)
        response = await self.get_response(request)
        response.headers.setdefault("X-Request-ID", request_id_var.get())
        return response
