"""Messages: every OpenAI role and `name` reach the upstream as sent; the contract's `images`
become OpenAI image content parts; content-part arrays pass as they are."""

from __future__ import annotations

import pytest

from completions.models import UsageRecord
from tests.completions.helpers import assert_books_balance, post_chat

IMAGE = "https://example.test/cat.png"


def test_given_every_role_and_names_when_sent_then_the_upstream_gets_them_unchanged(
    tenant, fake_upstream, client_for
):
    messages = [
        {"role": "developer", "content": "Be terse."},
        {"role": "system", "content": "You are a weather bot.", "name": "rules"},
        {"role": "user", "content": "Weather in Paris?", "name": "alice"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees.", "name": "bot"},
        {"role": "user", "content": "Thanks!"},
    ]

    completion = client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=messages, max_tokens=5
    )

    assert completion.choices[0].message.content
    sent = fake_upstream.requests[-1]["body"]["messages"]
    assert sent == messages


def test_given_images_when_sent_to_a_vision_model_then_they_become_image_parts_upstream(
    tenant, fake_upstream, http
):
    urls = [f"https://example.test/{n}.png" for n in range(4)]

    response = post_chat(http, tenant, {"model": "openai/gpt-4o", "max_tokens": 5, "messages": [
        {"role": "user", "content": "What is in these?", "images": urls}]})

    assert response.status_code == 200, response.text
    sent = fake_upstream.requests[-1]["body"]["messages"]
    assert sent == [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        *({"type": "image_url", "image_url": {"url": url}} for url in urls),
    ]}]
    usage = response.json()["usage"]
    assert usage["credits_breakdown"]["images"] > 0
    assert usage["credits_used"] == sum(usage["credits_breakdown"].values())
    assert UsageRecord.objects.get(request_id=response.json()["id"]).credits_breakdown == usage[
        "credits_breakdown"]
    assert_books_balance(tenant)


def test_given_images_beside_content_parts_then_they_are_appended_to_the_parts(
    tenant, fake_upstream, http
):
    parts = [{"type": "text", "text": "Compare"},
             {"type": "image_url", "image_url": {"url": IMAGE}}]

    response = post_chat(http, tenant, {"model": "openai/gpt-4o", "max_tokens": 5, "messages": [
        {"role": "user", "content": parts, "images": ["data:image/png;base64,iVBORw0KGgo="]}]})

    assert response.status_code == 200, response.text
    sent = fake_upstream.requests[-1]["body"]["messages"][0]["content"]
    assert sent == [*parts, {"type": "image_url",
                             "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


def test_given_content_parts_when_sent_then_they_pass_as_they_are(
    tenant, fake_upstream, client_for
):
    parts = [
        {"type": "text", "text": "Describe this"},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
    ]

    client_for(tenant).chat.completions.create(
        model="anthropic/claude-3.5-sonnet", max_tokens=5,
        messages=[{"role": "user", "content": parts}],
    )

    assert fake_upstream.requests[-1]["body"]["messages"] == [{"role": "user", "content": parts}]


def test_given_five_images_then_400_names_the_images(tenant, fake_upstream, http):
    response = post_chat(http, tenant, {"model": "openai/gpt-4o", "messages": [
        {"role": "user", "content": "Too many", "images": [IMAGE] * 5}]})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == "messages.0.images"
    assert fake_upstream.requests == []


def test_given_an_image_that_is_not_a_url_then_400(tenant, fake_upstream, http):
    response = post_chat(http, tenant, {"model": "openai/gpt-4o", "messages": [
        {"role": "user", "content": "Look", "images": ["file:///etc/passwd"]}]})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.images"
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": "Look", "images": [IMAGE]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]},
    ],
)
def test_given_images_for_a_model_without_vision_then_400(tenant, fake_upstream, http, message):
    response = post_chat(http, tenant, {"model": "deepseek/deepseek-chat", "messages": [message]})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == "messages"
    assert "deepseek/deepseek-chat" in error["message"]
    assert fake_upstream.requests == []
    assert_books_balance(tenant)


def test_given_a_content_part_without_a_type_then_400(tenant, fake_upstream, http):
    response = post_chat(http, tenant, {"messages": [{"role": "user", "content": [{"text": "x"}]}]})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0"
    assert fake_upstream.requests == []
