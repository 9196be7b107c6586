"""The kinds of provider NovaKit speaks to, each with its quirks in one place.

- `openai`: `Authorization: Bearer <key>`; `{base}/chat/completions`; OpenAI's body.
- `self_hosted`: the same, the header only when it has a key.
- `azure`: `api-key: <key>`;
  `{base}/openai/deployments/{upstream model}/chat/completions?api-version=<v>`;
  OpenAI's body without OpenRouter's `plugins`.
- `anthropic`: `x-api-key` and `anthropic-version`; `{base}/messages`; the Messages
  API, translated both ways (completions.anthropic); `n` above 1 refused.

`openai` covers OpenRouter, OpenAI itself and any OpenAI-compatible API that
wants a key; `self_hosted` one that needs none (vLLM, Ollama, llama.cpp on a
private network). Usage and errors: the OpenAI-shaped kinds report OpenAI's
`usage` and `error` objects (OpenRouter adds `usage.cost`, completions.costs);
Anthropic's are translated (completions.anthropic) and its error bodies read
as they are (`error.message`), its 529 "overloaded" counting as a 5xx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from completions import anthropic

if TYPE_CHECKING:  # completions.catalog reads this table for whether a route needs a key
    from completions.catalog import Route

Events = AsyncIterator[dict[str, Any]]


class Unsupported(ValueError):
    """The request asks for what this kind of provider cannot do (a 400 unless another
    route can)."""


@dataclass(frozen=True, slots=True)
class ProviderKind:
    name: str
    # Whether a route of this kind needs an API key to be usable.
    needs_key: bool
    url: Callable[[Route], str]
    headers: Callable[[Route], dict[str, str]]
    # The OpenAI-shaped payload as this provider takes it.
    request: Callable[[dict[str, Any]], dict[str, Any]] = lambda payload: payload
    # Its non-streaming answer as an OpenAI chat completion.
    answer: Callable[[dict[str, Any]], dict[str, Any]] = lambda data: data
    # Its stream's events as OpenAI chunks; None: they are OpenAI chunks already.
    chunks: Callable[[Events], Events] | None = None
    # The event type its stream ends with; None: OpenAI's `data: [DONE]`.
    last_event: str | None = None


def _bearer(route: Route) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Title": "NovaKit"}
    if route.api_key:
        headers["Authorization"] = f"Bearer {route.api_key}"
    return headers


def _chat_url(route: Route) -> str:
    return f"{route.base_url}/chat/completions"


def _azure_url(route: Route) -> str:
    deployment = quote(route.upstream_model, safe="")
    return (f"{route.base_url}/openai/deployments/{deployment}/chat/completions"
            f"?api-version={quote(route.api_version, safe='')}")


def _azure_headers(route: Route) -> dict[str, str]:
    return {"Content-Type": "application/json", "api-key": route.api_key}


def _anthropic_headers(route: Route) -> dict[str, str]:
    return {"Content-Type": "application/json", "x-api-key": route.api_key,
            "anthropic-version": anthropic.VERSION}


def _openrouter_extras_dropped(payload: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's own API and Azure refuse OpenRouter's `plugins` (web search)."""
    return {name: value for name, value in payload.items() if name != "plugins"}


def _anthropic_request(payload: dict[str, Any]) -> dict[str, Any]:
    if int(payload.get("n") or 1) > 1:
        raise Unsupported("Anthropic's models give one answer per request: 'n' must be 1")
    return anthropic.messages_request(payload)


KINDS: dict[str, ProviderKind] = {
    "openai": ProviderKind("openai", needs_key=True, url=_chat_url, headers=_bearer),
    "self_hosted": ProviderKind("self_hosted", needs_key=False, url=_chat_url, headers=_bearer),
    "azure": ProviderKind("azure", needs_key=True, url=_azure_url, headers=_azure_headers,
                          request=_openrouter_extras_dropped),
    "anthropic": ProviderKind("anthropic", needs_key=True,
                              url=lambda route: f"{route.base_url}/messages",
                              headers=_anthropic_headers, request=_anthropic_request,
                              answer=anthropic.chat_completion, chunks=anthropic.chat_chunks,
                              last_event="message_stop"),
}


def kind_of(route: Route) -> ProviderKind:
    return KINDS.get(route.kind, KINDS["openai"])


def needs_key(kind: str) -> bool:
    """Whether a route of `kind` is usable only with an API key (the built-in model: no)."""
    return kind in KINDS and KINDS[kind].needs_key
