"""NovaKit's own pages for a page that is not there and a form that was refused.

With DEBUG on (the default of `make run`) Django answers an unknown URL, and an
`Http404` raised by a view, with its technical page, which lists every URL
pattern of the site, and never consults `handler404`; a CSRF failure gets its
debug page. A new user met those first. `NotFoundPageMiddleware` renders
templates/404.html instead whatever DEBUG says, and under /api/ the API's one
JSON error shape (clients parse it); `csrf_failure` is CSRF_FAILURE_VIEW.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.utils.deprecation import MiddlewareMixin

from novakit.errors import error_response, forbidden, not_found

# Set on the responses rendered here, so one is not rendered twice.
_RENDERED = "novakit_error_page"


def _mark(response: HttpResponse) -> HttpResponse:
    setattr(response, _RENDERED, True)
    return response


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """templates/404.html, or under /api/ the API's JSON error. Also `handler404`."""
    if request.path.startswith("/api/"):
        return _mark(error_response(not_found()))
    return _mark(render(request, "404.html", status=404))


class NotFoundPageMiddleware(MiddlewareMixin):
    """`page_not_found` for every 404 Django itself produces, in DEBUG too.

    Sits inside CommonMiddleware, which then still turns a 404 for a path
    missing its slash into a redirect to the path with it.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, Http404):
            return page_not_found(request, exception)
        return None

    def process_response(self, request: HttpRequest, response: HttpResponseBase
                         ) -> HttpResponseBase:
        # An unknown URL never reaches a view, so never process_exception: Django
        # turns its Resolver404 into a page and hands that back up the chain, and
        # the request has no resolver_match. A view's own 404 (an API's JSON) has one.
        if (response.status_code == 404 and getattr(request, "resolver_match", None) is None
                and not getattr(response, _RENDERED, False)):
            return page_not_found(request)
        return response


CSRF_MESSAGE = ("This form has expired or its security token is missing: go back, reload the "
                "page and try again. (Your browser must accept cookies from this site.)")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: a page that says what to do; JSON to the pages' own scripts."""
    if request.path.startswith("/api/") or request.content_type == "application/json":
        return error_response(forbidden(CSRF_MESSAGE))
    return render(request, "403_csrf.html", {"message": CSRF_MESSAGE}, status=403)
