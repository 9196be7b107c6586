"""Sign-in throttling for the portal and the admin, with django-axes.

After `LOGIN_FAILURE_LIMIT` failed sign-ins for one username from one client
address, that pair is refused for `LOGIN_LOCKOUT_SECONDS`, even with the right
password; the same user from another address, and other users, are unaffected.
Failures are rows in the database (axes' database handler), so every gateway
process sees the same count, with or without Redis.

Wiring (novakit/settings.py): `SignInThrottleBackend` first in
AUTHENTICATION_BACKENDS refuses a locked-out pair before any password is
checked; axes' middleware, last, turns such a refusal into
`locked_out_response`.
"""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.utils import reset as axes_reset
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.models import AbstractBaseUser
from django.forms import Form
from django.forms.utils import ErrorList
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.forms import EmailAuthenticationForm


def lockout_minutes() -> int:
    return max(1, round(settings.AXES_COOLOFF_TIME.total_seconds() / 60))


def lockout_message() -> str:
    minutes = lockout_minutes()
    return (f"Too many failed sign-in attempts. Sign-in is locked for {minutes} "
            f"minute{'s' if minutes != 1 else ''}; try again later or reset your password.")


class SignInThrottleBackend(AxesStandaloneBackend):
    """Axes' lockout check, for sign-ins that come with a request.

    `authenticate()` without a request (Django's test client `login()`, code
    checking a password in-process) has no client address to throttle by; axes
    would raise instead of answering. Every sign-in form over HTTP (the portal's,
    the admin's, the password views') passes its request, so they are all
    throttled.
    """

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


def signin_lockout_lift(*, user: AbstractBaseUser) -> int:
    """Forget `user`'s failed sign-ins, from every address; return how many were forgotten.

    Called when a password reset completes: following the emailed link proves the
    account is the caller's, and the lockout page tells a locked-out user that a
    reset is the way back in.
    """
    return axes_reset(username=user.get_username())


def client_address(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: the address the server trusts, REMOTE_ADDR.

    uvicorn has already put the proxy's X-Forwarded-For there when, and only
    when, FORWARDED_ALLOW_IPS names that proxy. Said explicitly because axes
    would otherwise read X-Forwarded-For itself, from anyone, as soon as
    django-ipware is installed.
    """
    return request.META.get("REMOTE_ADDR")


def _with_error(form: Form, message: str) -> Form:
    # An unbound form never validates, so it never calls authenticate() again (which would
    # count one more failure); its error list is set directly for the template to show.
    form.errors["__all__"] = ErrorList([message], error_class="nonfield")
    return form


def locked_out_response(request: HttpRequest, *_: Any) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the sign-in page again, with the reason, as a 429.

    Takes no notice of the other arguments: axes passes (response, credentials)
    on its synchronous path but (credentials, None) on its asynchronous one
    (ASGI), so they cannot be relied on.
    """
    message = lockout_message()
    match = request.resolver_match
    if match is not None and match.namespace == admin.site.name:
        context = {
            **admin.site.each_context(request),
            "title": "Log in",
            "app_path": request.get_full_path(),
            "form": _with_error(AdminAuthenticationForm(request), message),
            REDIRECT_FIELD_NAME: request.POST.get(REDIRECT_FIELD_NAME, ""),
        }
        response = render(request, "admin/login.html", context, status=429)
    else:
        form = _with_error(EmailAuthenticationForm(request), message)
        response = render(request, "registration/login.html", {
            "form": form, "member": None,
            "next": request.POST.get(REDIRECT_FIELD_NAME, ""),
        }, status=429)
    response["Retry-After"] = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    return response
