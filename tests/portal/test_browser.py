"""In a real browser (headless Chromium), against the real server: the portal end to end.

Screenshots of every page land in tests/artifacts/screenshots/, named by page.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from playwright.sync_api import Page, expect

from accounts import webhooks
from accounts.keys import visible_prefix
from accounts.models import APIKey
from completions.catalog import catalog_cache
from completions.models import UsageRecord
from completions.rollups import usage_rollup
from portal.views.playground import PLAYGROUND_KEY_NAME
from tests.portal.conftest import off_loop
from tests.support.webhook_receiver import Receiver

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
PASSWORD = "correct-horse-battery-staple-42"
MOBILE = {"width": 375, "height": 800}


def open_page(browser: Any, live_gateway: Any, viewport: dict[str, int] | None = None
              ) -> tuple[Page, list[str]]:
    """A fresh browser context on the live server, and the list of every URL it requests."""
    context = browser.new_context(base_url=live_gateway.url,
                                  viewport=viewport or {"width": 1280, "height": 900},
                                  permissions=["clipboard-read", "clipboard-write"])
    context.set_default_timeout(15_000)
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    return context.new_page(), requested


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def assert_fits(page: Page, name: str, width: int = MOBILE["width"]) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    if scroll_width > width:
        screenshot(page, f"overflow-{name}")
        culprits = page.evaluate("""(width) => Array.from(document.querySelectorAll("body *"))
            .filter((el) => el.getBoundingClientRect().right > width + 1 &&
                    el.parentElement.getBoundingClientRect().right <= width + 1)
            .slice(0, 5).map((el) => el.tagName + "." + el.className + " " +
                             Math.round(el.getBoundingClientRect().right))""", width)
        pytest.fail(f"{name} overflows a {width}px screen: {scroll_width}px wide; {culprits}")


def assert_only_local(requested: list[str], live_gateway: Any) -> None:
    own = urlsplit(live_gateway.url).netloc
    foreign = [url for url in requested
               if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc != own]
    assert not foreign, f"pages fetched from other hosts: {foreign}"


def sign_up(page: Page, *, email: str, organization: str) -> None:
    page.goto("/portal/signup/")
    page.locator("#id_email").fill(email)
    page.locator("#id_password").fill(PASSWORD)
    page.locator("#id_organization").fill(organization)
    page.get_by_role("button", name="Create the account").click()
    expect(page).to_have_url(re.compile(r"/portal/keys/$"))


def create_key(page: Page, name: str) -> str:
    page.goto("/portal/keys/")
    create = page.locator("details.create")
    if create.get_attribute("open") is None:
        create.locator("summary").click()
    page.locator("#id_name").fill(name)
    page.get_by_role("button", name="Create the key").click()
    secret = page.get_by_test_id("new-secret").inner_text().strip()
    assert secret.startswith("sk_")
    return secret


def test_a_developer_signs_up_uses_a_key_sees_usage_streams_in_the_playground_and_revokes(
    browser: Any, live_gateway: Any, fake_upstream: Any, settings: Any
) -> None:
    settings.PORTAL_SIGNUP_CREDITS = 50_000
    page, requested = open_page(browser, live_gateway)

    # Given a new developer who signs up
    sign_up(page, email="dev@example.test", organization="Example Labs")
    expect(page.locator(".messages")).to_contain_text("50,000 credits")

    # When they create a key, the secret is on the page once, with a warning
    secret = create_key(page, "ci key")
    expect(page.locator(".notice.danger")).to_contain_text("shown this once")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    screenshot(page, "desktop-key-created")

    # Then the secret works with the OpenAI SDK
    client = openai.OpenAI(api_key=secret, base_url=live_gateway.api_base, max_retries=0)
    completion = client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=20)
    assert completion.choices[0].message.content.startswith("The quick")
    credits_used = completion.usage.model_extra["credits_used"]
    assert credits_used > 0

    # And once the rollup job has run, the usage page shows the request
    off_loop(usage_rollup)
    page.goto("/portal/usage/")
    expect(page.locator('[data-total="requests"]')).to_have_text("1")
    expect(page.locator('[data-total="credits"]')).to_have_text(str(credits_used))
    expect(page.locator("#by-key")).to_contain_text("ci key")
    expect(page.locator("#by-model")).to_contain_text("openai/gpt-4o-mini")
    assert page.locator('figure[data-chart="requests"] rect').count() == 1

    # When they send a message in the playground, the answer streams in piece by piece
    page.goto("/portal/playground/")
    page.locator("#pg-messages textarea").last.fill("Tell me a story [[fault:slow:0.15]]")
    page.evaluate("""() => {
        const output = document.getElementById("pg-output");
        window.__seen = [];
        new MutationObserver(() => window.__seen.push(output.textContent))
            .observe(output, {childList: true, characterData: true, subtree: true});
    }""")
    page.get_by_role("button", name="Send").click()
    credits = page.get_by_test_id("playground-credits")
    expect(credits).to_have_text(re.compile(r"^[1-9][0-9]*$"))
    final = page.get_by_test_id("playground-output").inner_text()
    assert final == "The quick brown fox jumps over the lazy"
    seen = [text for text in page.evaluate("window.__seen") if text]
    partial = [text for text in seen if text != final]
    assert len(set(partial)) >= 3, f"the answer did not arrive in pieces: {seen}"
    assert all(final.startswith(text) for text in partial)
    screenshot(page, "desktop-playground-answered")
    playground_record = off_loop(lambda: UsageRecord.objects.select_related("api_key").get(
        api_key__name=PLAYGROUND_KEY_NAME))
    assert playground_record.streamed and playground_record.status == "ok"
    assert playground_record.credits == int(credits.inner_text())

    # When they revoke the key, the next SDK call is refused
    page.goto("/portal/keys/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'tr[data-key-prefix="{visible_prefix(secret)}"]').get_by_role(
        "button", name="Revoke").click()
    expect(page.locator(".messages")).to_contain_text("Revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Again"}])
    assert_only_local(requested, live_gateway)


def test_a_new_developer_runs_the_first_request_from_the_overview_as_shown_and_it_answers(
    browser: Any, live_gateway: Any, settings: Any
) -> None:
    # Given a fresh install: no provider key, so only the built-in echo model answers
    settings.OPENROUTER_API_KEY = ""
    catalog_cache.clear()
    page, _ = open_page(browser, live_gateway)
    sign_up(page, email="first@example.test", organization="First Co")
    secret = create_key(page, "first key")

    # When they copy the overview's first request and run it with their key
    page.goto("/portal/")
    example = page.locator("section", has=page.get_by_role("heading", name="First request"))
    command = example.locator("pre").inner_text()
    assert "sk_your_api_key" in command
    # As a shell reads it: a backslash at the end of a line continues the command.
    argv = shlex.split(command.replace("sk_your_api_key", secret).replace("\\\n", " "))
    assert argv[0] == "curl"
    ran = subprocess.run([*argv, "--silent", "--show-error", "--write-out", "\\n%{http_code}"],
                         capture_output=True, text=True, timeout=30, check=False)

    # Then it answers 200 with a completion
    body, _, status = ran.stdout.rpartition("\n")
    assert status == "200", f"{status}: {body} {ran.stderr}"
    completion = json.loads(body)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"].startswith("Echo: Hello!")
    # And the page says how to switch on real models
    expect(example).to_contain_text("OPENROUTER_API_KEY")
    screenshot(page, "desktop-overview-first-request")


def test_reloading_the_page_of_a_new_key_makes_no_other_key_and_shows_the_secret_no_more(
    browser: Any, live_gateway: Any
) -> None:
    page, _ = open_page(browser, live_gateway)
    sign_up(page, email="reload@example.test", organization="Reload Co")
    secret = create_key(page, "reloaded key")

    page.reload()

    assert secret not in page.content()
    expect(page.get_by_test_id("new-secret")).to_have_count(0)
    assert off_loop(lambda: APIKey.objects.filter(name="reloaded key").count()) == 1


PHONE = {"width": 390, "height": 844}


def box_within_width(page: Page, selector: str, width: int) -> dict[str, float]:
    """An element's box, asserted to be on a screen `width` pixels wide as the page stands."""
    box = page.evaluate("(selector) => document.querySelector(selector)"
                        ".getBoundingClientRect().toJSON()", selector)
    assert box["width"] > 0 and box["left"] >= 0 and box["right"] <= width, (selector, box)
    return box


def test_at_390_pixels_the_keys_actions_are_on_screen_and_the_grace_choice_is_labelled(
    browser: Any, live_gateway: Any
) -> None:
    page, _ = open_page(browser, live_gateway, PHONE)
    sign_up(page, email="narrow@example.test", organization="Narrow Co")
    secret = create_key(page, "a key with a rather long descriptive name")

    page.goto("/portal/keys/")

    row = f'tr[data-key-prefix="{visible_prefix(secret)}"]'
    screenshot(page, "keys-390")
    # As the page loads: nobody is told to scroll the table sideways to find them
    for button in ("Rotate", "Revoke"):
        box = page.locator(row).get_by_role("button", name=button).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (button, box)
    # The menu reads "1 hour": a label on the screen says of what
    select = page.locator(row).locator("select[name=grace_seconds]")
    expect(select.locator("option:checked")).to_have_text("1 hour")
    label = page.locator(f'label[for="{select.get_attribute("id")}"]')
    expect(label).to_have_text(re.compile("old key", re.I))
    label_box = box_within_width(page, f'label[for="{select.get_attribute("id")}"]',
                                 PHONE["width"])
    assert label_box["width"] > 40 and label_box["height"] > 8, label_box
    assert label.evaluate("(l) => l.scrollWidth <= l.clientWidth + 1"), "the label is clipped"
    assert_fits(page, "keys-390", PHONE["width"])


def test_at_390_pixels_a_key_is_edited_from_its_row_and_the_list_shows_the_change(
    browser: Any, live_gateway: Any
) -> None:
    page, _ = open_page(browser, live_gateway, PHONE)
    sign_up(page, email="edit@example.test", organization="Edit Co")
    secret = create_key(page, "before")
    page.goto("/portal/keys/")
    row = f'tr[data-key-prefix="{visible_prefix(secret)}"]'

    page.locator(row).get_by_role("link", name="Edit").click()
    expect(page.locator("#id_name")).to_have_value("before")
    screenshot(page, "key-edit-390")
    assert_fits(page, "key-edit-390", PHONE["width"])
    page.locator("#id_name").fill("after")
    page.locator("#id_requests_per_minute").fill("25")
    page.get_by_role("button", name="Save the key").click()

    expect(page).to_have_url(re.compile(r"/portal/keys/$"))
    expect(page.locator(".messages")).to_contain_text("Saved")
    expect(page.locator(row)).to_contain_text("after")
    expect(page.locator(row)).to_contain_text("25 req/min")
    key = off_loop(lambda: APIKey.objects.get(prefix=visible_prefix(secret)))
    assert (key.name, key.requests_per_minute) == ("after", 25)


def test_at_390_pixels_the_playgrounds_code_is_not_cut_off(browser: Any, live_gateway: Any
                                                          ) -> None:
    page, _ = open_page(browser, live_gateway, PHONE)
    sign_up(page, email="pg-narrow@example.test", organization="Narrow Co")

    page.goto("/portal/playground/")

    code = page.locator('pre[data-panel="curl"]')
    expect(code).to_contain_text("chat/completions")
    screenshot(page, "playground-390")
    box_within_width(page, 'pre[data-panel="curl"]', PHONE["width"])
    hidden = code.evaluate("(pre) => pre.scrollWidth - pre.clientWidth")
    assert hidden <= 1, f"{hidden}px of the code are cut off the right edge"
    assert_fits(page, "playground-390", PHONE["width"])


PAGES = {
    "overview": "/portal/",
    "keys": "/portal/keys/",
    "usage": "/portal/usage/",
    "usage-hourly": "/portal/usage/?granularity=hour",
    "billing": "/portal/billing/",
    "playground": "/portal/playground/",
    "members": "/portal/members/",
    "webhooks": "/portal/webhooks/",
    "reference": "/portal/reference/",
    "reference-management": "/portal/reference/management/",
}
SIGNED_OUT_PAGES = {
    "sign-in": "/portal/signin/",
    "sign-up": "/portal/signup/",
    "password-reset": "/portal/password-reset/",
}


def test_every_page_fits_a_375_pixel_screen_and_loads_nothing_from_other_hosts(
    browser: Any, live_gateway: Any, fake_upstream: Any
) -> None:
    page, requested = open_page(browser, live_gateway, MOBILE)
    sign_up(page, email="phone@example.test", organization="Pocket Co")
    assert_fits(page, "keys (empty)")
    secret = create_key(page, "a key with a rather long descriptive name")
    assert_fits(page, "key-created")
    screenshot(page, "key-created")
    client = openai.OpenAI(api_key=secret, base_url=live_gateway.api_base, max_retries=0)
    for model in ("openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet"):
        client.chat.completions.create(model=model, max_tokens=20,
                                       messages=[{"role": "user", "content": "Hi"}])
    off_loop(usage_rollup)

    for name, path in PAGES.items():
        page.goto(path)
        assert_fits(page, name)
        screenshot(page, name)
    page.set_viewport_size({"width": 1280, "height": 900})
    for name, path in PAGES.items():
        page.goto(path)
        screenshot(page, f"desktop-{name}")

    page.set_viewport_size(MOBILE)
    page.get_by_role("button", name="Sign out").click()
    for name, path in SIGNED_OUT_PAGES.items():
        page.goto(path)
        assert_fits(page, name)
        screenshot(page, name)
    assert_only_local(requested, live_gateway)


def test_the_inference_api_docs_load_from_this_server_alone(browser: Any, live_gateway: Any
                                                            ) -> None:
    page, requested = open_page(browser, live_gateway)

    page.goto("/api/v1/docs")

    expect(page.locator(".swagger-ui .info .title")).to_contain_text("NovaKit inference API")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    screenshot(page, "inference-api-docs")
    assert_only_local(requested, live_gateway)


def test_an_owner_registers_a_webhook_sees_its_secret_once_and_opens_a_receipt(
    browser: Any, live_gateway: Any, fake_upstream: Any, settings: Any
) -> None:
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    receiver = Receiver()
    try:
        page, requested = open_page(browser, live_gateway, MOBILE)
        sign_up(page, email="hooks@example.test", organization="Hook Co")
        page.get_by_role("link", name="Webhooks").click()
        expect(page).to_have_url(re.compile(r"/portal/webhooks/$"))

        # A private address is refused in the form
        page.locator("#id_url").fill("https://10.0.0.7/hook")
        page.locator('input[name="events"][value="key.revoked"]').check()
        page.get_by_role("button", name="Register the endpoint").click()
        expect(page.locator("#id_url_error, .errorlist").first).to_contain_text(
            "non-public address")
        assert_fits(page, "webhook-refused")

        # A receiver the development setting allows is registered; its secret shows once
        page.locator("#id_url").fill(receiver.url)
        page.get_by_role("button", name="Register the endpoint").click()
        secret = page.get_by_test_id("webhook-secret").inner_text().strip()
        assert secret.startswith("whsec_")
        expect(page.locator(".notice.danger")).to_contain_text("shown this once")
        assert_fits(page, "webhook-created")
        screenshot(page, "webhook-created")
        page.get_by_role("link", name="I have copied it").click()
        expect(page.get_by_test_id("endpoint-status")).to_have_text("enabled")
        assert secret not in page.content()
        page.goto("/portal/webhooks/")
        assert secret not in page.content()

        # A key revoked in the portal is announced to the receiver, signed with that secret
        key_secret = create_key(page, "hooked key")
        client = openai.OpenAI(api_key=key_secret, base_url=live_gateway.api_base,
                               max_retries=0)
        completion = client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}],
            max_tokens=20)
        page.goto("/portal/keys/")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator(f'tr[data-key-prefix="{visible_prefix(key_secret)}"]').get_by_role(
            "button", name="Revoke").click()
        expect(page.locator(".messages")).to_contain_text("Revoked")
        assert len(receiver.received) == 1
        assert webhooks.signature_verify(
            secret, receiver.received[0]["headers"]["NovaKit-Signature"],
            receiver.received[0]["body"])
        page.goto("/portal/webhooks/")
        page.get_by_role("link", name=receiver.url).click()
        delivery = page.locator("#deliveries tbody tr").first
        expect(delivery).to_contain_text("key.revoked")
        expect(delivery).to_contain_text("delivered")
        expect(delivery).to_contain_text("HTTP 200")
        assert_fits(page, "webhook-detail")
        screenshot(page, "webhook-detail")

        # The usage page lists the request; its receipt shows the charge
        page.goto("/portal/usage/")
        row = page.locator(f'#recent tr[data-request-id="{completion.id}"]')
        expect(row).to_contain_text("openai/gpt-4o-mini")
        assert_fits(page, "usage-recent")
        row.get_by_role("link").click()
        expect(page).to_have_url(re.compile(rf"/portal/usage/{completion.id}/$"))
        credits_used = completion.usage.model_extra["credits_used"]
        expect(page.locator('[data-receipt="credits_used"]')).to_have_text(
            f"{credits_used:,}")
        expect(page.locator('[data-receipt="ledger_amount"]')).to_contain_text(
            f"-{credits_used:,}")
        assert_fits(page, "receipt")
        screenshot(page, "receipt")
        page.set_viewport_size({"width": 1280, "height": 900})
        screenshot(page, "desktop-receipt")
        page.goto("/portal/webhooks/")
        screenshot(page, "desktop-webhooks")
        assert_only_local(requested, live_gateway)
    finally:
        receiver.stop()
