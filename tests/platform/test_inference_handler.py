"""The inference API's handler: Django's request signals still fire once per request, on the
event loop when the database has its own threads, in a thread of Django's own otherwise."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from django.core import signals
from django.core.handlers.asgi import ASGIRequest

from completions import tokens
from novakit.asgi import application

MESSAGES = [{"role": "user", "content": "Tell me a short story"}]


@pytest.fixture
def fired() -> Iterator[list[tuple[str, bool, str]]]:
    """Each request signal as it fires: (signal, on an event loop, thread name)."""
    seen: list[tuple[str, bool, str]] = []

    def recorder(name: str):  # type: ignore[no-untyped-def]
        def receive(**_: object) -> None:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            seen.append((name, on_loop, threading.current_thread().name))
        return receive

    started, finished = recorder("started"), recorder("finished")
    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield seen
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


def signals_once_finished(fired: list[tuple[str, bool, str]]) -> list[tuple[str, bool]]:
    """The signals fired, once `request_finished` has: the server sends it after the last
    byte of the response, so the client can hold its answer a moment before it fires."""
    deadline = time.monotonic() + 5
    while not any(name == "finished" for name, _, _ in fired) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [(name, on_loop) for name, on_loop, _ in fired]


def test_given_database_threads_then_a_completion_fires_each_signal_once_on_the_loop(
    tenant, fake_upstream, client_for, fired
):
    answer = client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=5)

    assert answer.choices[0].message.content
    assert signals_once_finished(fired) == [
        ("started", True), ("finished", True)]


def test_given_database_threads_then_a_stream_fires_finished_once_it_is_over(
    tenant, fake_upstream, client_for, fired
):
    stream = client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=5, stream=True)
    chunks = list(stream)

    assert chunks[-1].usage is not None
    assert signals_once_finished(fired) == [
        ("started", True), ("finished", True)]


async def test_without_database_threads_then_django_sends_the_signals_from_a_thread(
    settings, fired
):
    settings.DB_THREADS = 0
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.post("/api/v1/chat/completions", json={"model": "x"})

    assert answer.status_code == 401  # refused before any database work
    assert [(name, on_loop) for name, on_loop, _ in fired] == [
        ("started", False), ("finished", False)]


async def test_with_the_inference_handler_off_then_djangos_own_handler_serves_the_api(
    settings, fired
):
    settings.INFERENCE_HANDLER = False
    assert settings.DB_THREADS  # the database threads alone do not put the signals on the loop
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.post("/api/v1/chat/completions", json={"model": "x"})

    assert answer.status_code == 401
    assert [(name, on_loop) for name, on_loop, _ in fired] == [
        ("started", False), ("finished", False)]


@pytest.mark.parametrize("path", ["/api/v1/chat/complete", "/api/v1/chat/", "/api/v1/modelsx"])
def test_given_an_unknown_inference_path_then_a_404_in_the_api_error_shape(
    live_gateway, path: str
):
    answer = httpx.post(f"{live_gateway.url}{path}", json={}, timeout=10)

    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_start_up_leaves_what_it_built_out_of_the_collectors_walks(live_gateway):
    tokenizer = tokens._encoding()  # built by the gateway's start-up, before it froze

    assert gc.get_freeze_count() > 0
    assert all(tracked is not tokenizer for tracked in gc.get_objects())


def test_start_up_collects_the_youngest_generation_less_often(live_gateway, settings):
    # A completion makes a few thousand short-lived objects; Python's 700 scanned them often.
    assert settings.GC_YOUNG_THRESHOLD > 700
    assert gc.get_threshold()[0] == settings.GC_YOUNG_THRESHOLD


def test_a_served_completion_leaves_no_cycle_for_the_garbage_collector(
    tenant, fake_upstream, client_for
):
    client = client_for(tenant)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds goes to gc.garbage, for reading
    try:
        for _ in range(3):
            client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=MESSAGES, max_tokens=5)
        gc.collect()
        stranded = [found for found in gc.garbage if isinstance(found, ASGIRequest)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()

    assert stranded == []
