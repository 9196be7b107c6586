"""Given a tokens-per-minute limit, a request is admitted on its estimate (prompt + max_tokens)
and, once settled, counts only the tokens it used."""

from __future__ import annotations

import time

import httpx
import pytest

from completions.catalog import catalog_cache
from completions.models import CatalogModel


@pytest.fixture
def http(live_gateway):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_gateway.api_base, timeout=20) as client:
        yield client


def ask(http: httpx.Client, secret: str, *, stream: bool) -> tuple[httpx.Response, int]:
    """One echo request with a large budget; returns the response and the tokens it used."""
    body = {"model": "novakit/echo", "max_tokens": 1_400, "stream": stream,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Count me in"}]}
    response = http.post("/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                         json=body)
    if response.status_code != 200:
        return response, 0
    if stream:
        last = [line for line in response.text.splitlines() if line.startswith("data: {")][-1]
        usage = httpx.Response(200, content=last[6:]).json()["usage"]
    else:
        usage = response.json()["usage"]
    return response, usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
def test_given_3000_tpm_then_requests_estimated_at_1400_each_keep_fitting_once_settled(
    backend, tenant, limited_key, http, stream
):
    caller = limited_key(tenant, tokens_per_minute=3_000)
    started = time.monotonic()

    results = [ask(http, caller.secret, stream=stream) for _ in range(5)]

    # Without the correction the third would be refused: 3 x ~1,410 > 3,000.
    assert [response.status_code for response, _ in results] == [200] * 5
    estimate = 3_000 - int(results[0][0].headers["x-ratelimit-remaining-tokens"])
    assert estimate > 1_400
    used_before_last = sum(used for _, used in results[:4])
    assert 0 < used_before_last < 200
    expected = 3_000 - used_before_last - estimate
    refilled = (time.monotonic() - started) * 3_000 / 60 + 1  # 50 tokens a second come back
    remaining = int(results[4][0].headers["x-ratelimit-remaining-tokens"])
    assert expected <= remaining <= expected + refilled


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
def test_given_an_upstream_reporting_absurd_usage_then_the_correction_uses_the_billed_bounds(
    backend, tenant, limited_key, fake_upstream, http, stream
):
    """10**12 tokens reported, corrected as billed (the model's context window plus the
    budget): the key stays usable instead of being locked out for years."""
    CatalogModel.objects.filter(model_id="openai/gpt-4o-mini").update(context_length=4_096)
    catalog_cache.clear()
    caller = limited_key(tenant, tokens_per_minute=10_000)
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 50, "stream": stream,
            "messages": [{"role": "user", "content": "[[fault:huge_usage]] Hello"}]}
    headers = {"Authorization": f"Bearer {caller.secret}"}

    first = http.post("/chat/completions", headers=headers, json=body)
    second = http.post("/chat/completions", headers=headers, json=body)

    assert first.status_code == 200
    assert second.status_code == 200, second.headers.get("Retry-After")
    # The first took its bounds (4,096 + 50), the second its estimate (about 60).
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert remaining >= 10_000 - (4_096 + 50) - 100
