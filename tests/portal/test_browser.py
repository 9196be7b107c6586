"""In a real browser (headless Chromium), against the real server: the portal end to end.

Screenshots of every page land in tests/artifacts/screenshots/, named by page: at 390 px
`<page>-390.png`, at desktop width `desktop-<page>.png`.
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
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, expect

from accounts import webhooks
from accounts.keys import visible_prefix
from accounts.models import (
    APIKey,
    AuditEvent,
    Membership,
    Organization,
    WebhookDelivery,
    WebhookEndpoint,
)
from accounts.services import membership_add
from billing.codes import code_create
from billing.models import CodeRedemption, LedgerEntry
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


def test_a_developer_signs_up_uses_a_key_sees_usage_streams_in_the_playground_reads_the_receipt(
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

    # And the usage page lists the streamed request; its receipt shows what the playground said
    page.goto("/portal/usage/")
    page.locator(f'#recent tr[data-request-id="{playground_record.request_id}"]').get_by_role(
        "link").click()
    expect(page).to_have_url(re.compile(rf"/portal/usage/{playground_record.request_id}/$"))
    expect(page.get_by_test_id("receipt-status")).to_have_text("ok")
    expect(page.locator('[data-receipt="credits_used"]')).to_have_text(
        f"{playground_record.credits:,}")
    expect(page.locator("table.kv tr", has=page.locator("th", has_text="Streamed"))
           .locator("td")).to_have_text("yes")
    screenshot(page, "desktop-playground-receipt")

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


def record_counts() -> dict[str, int]:
    """How many of each thing a portal or staff form can create, changes being audit rows."""
    return {"users": get_user_model().objects.count(),
            "organizations": Organization.objects.count(),
            "memberships": Membership.objects.count(), "keys": APIKey.objects.count(),
            "endpoints": WebhookEndpoint.objects.count(),
            "deliveries": WebhookDelivery.objects.count(),
            "ledger entries": LedgerEntry.objects.count(),
            "audit rows": AuditEvent.objects.count()}


def navigations_of(page: Page) -> list[tuple[str, str]]:
    """The (method, URL) of every document the page loads from now on, redirects included."""
    navigations: list[tuple[str, str]] = []
    page.on("request", lambda request: request.is_navigation_request() and navigations.append(
        (request.method, request.url)))
    return navigations


def assert_reload_sends_nothing_again(page: Page, navigations: list[tuple[str, str]],
                                      after: str) -> dict[str, int]:
    """Reload the page a form landed on: only GETs, and nothing in the database moves."""
    before = off_loop(record_counts)
    navigations.clear()
    page.reload()
    page.wait_for_load_state()
    assert navigations and {method for method, _ in navigations} == {"GET"}, (
        f"reloading after {after} sent {navigations}")
    assert off_loop(record_counts) == before, f"reloading after {after} changed the database"
    return before


def test_reloading_the_page_every_form_lands_on_sends_nothing_again(
    browser: Any, live_gateway: Any, fake_upstream: Any, settings: Any
) -> None:
    settings.PORTAL_SIGNUP_CREDITS = 50_000
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    receiver = Receiver()
    page, _ = open_page(browser, live_gateway)
    navigations = navigations_of(page)
    try:
        # Sign up: a user, an organization, its owner, the starter credits
        sign_up(page, email="reloader@example.test", organization="Reloader Co")
        counts = assert_reload_sends_nothing_again(page, navigations, "sign up")
        assert (counts["users"], counts["organizations"], counts["memberships"],
                counts["ledger entries"]) == (1, 1, 1, 1)

        # Create a key, then rotate it: the page that shows the new secret, reloaded
        secret = create_key(page, "reload walk")
        expect(page).to_have_url(re.compile(r"/portal/keys/\d+/created$"))
        assert assert_reload_sends_nothing_again(page, navigations, "create key")["keys"] == 1
        page.locator(f'tr[data-key-prefix="{visible_prefix(secret)}"]').get_by_role(
            "button", name="Rotate").click()
        expect(page.get_by_test_id("new-secret")).to_be_visible()
        rotated = page.get_by_test_id("new-secret").inner_text().strip()
        assert assert_reload_sends_nothing_again(page, navigations, "rotate key")["keys"] == 2

        # Edit the new key
        page.goto("/portal/keys/")
        page.locator(f'tr[data-key-prefix="{visible_prefix(rotated)}"]').get_by_role(
            "link", name="Edit").click()
        page.locator("#id_name").fill("reload walk, edited")
        page.get_by_role("button", name="Save the key").click()
        expect(page.locator(".messages")).to_contain_text("Saved")
        edited = assert_reload_sends_nothing_again(page, navigations, "edit key")
        assert edited["audit rows"] > counts["audit rows"]

        # Invite a member, then change their role
        page.goto("/portal/members/")
        page.locator("#id_email").fill("colleague@example.test")
        page.locator("#id_role").select_option("viewer")
        page.get_by_role("button", name="Send the invitation").click()
        expect(page.locator(".messages")).to_contain_text("Invited colleague@example.test")
        counts = assert_reload_sends_nothing_again(page, navigations, "invite member")
        assert counts["memberships"] == 2
        row = page.locator('tr[data-member="colleague@example.test"]')
        row.locator("select[name=role]").select_option("admin")
        row.get_by_role("button", name="Change").click()
        expect(page.locator(".messages")).to_contain_text("is now admin")
        changed = assert_reload_sends_nothing_again(page, navigations, "change role")
        assert changed["audit rows"] > counts["audit rows"]

        # Register a webhook: the page that shows its secret, reloaded
        page.goto("/portal/webhooks/")
        page.locator("#id_url").fill(receiver.url)
        page.locator('input[name="events"][value="key.revoked"]').check()
        page.get_by_role("button", name="Register the endpoint").click()
        expect(page.get_by_test_id("webhook-secret")).to_be_visible()
        counts = assert_reload_sends_nothing_again(page, navigations, "register webhook")
        assert counts["endpoints"] == 1

        # Send it a test event, then redeliver that: one POST to the receiver each
        page.get_by_role("button", name="Send a test event").click()
        expect(page.locator(".messages")).to_contain_text("was delivered (HTTP 200)")
        counts = assert_reload_sends_nothing_again(page, navigations, "send a test event")
        assert (counts["deliveries"], len(receiver.received)) == (1, 1)
        page.locator("#deliveries tbody tr").first.get_by_role("button",
                                                                name="Redeliver").click()
        expect(page.locator(".messages")).to_contain_text("(again) was delivered")
        counts = assert_reload_sends_nothing_again(page, navigations, "redeliver")
        assert (counts["deliveries"], len(receiver.received)) == (2, 2)

        # Disable the endpoint; revoke the key; remove the member: each a change made once
        page.get_by_role("button", name="Disable").click()
        expect(page.get_by_test_id("endpoint-status")).to_have_text("disabled")
        counts = assert_reload_sends_nothing_again(page, navigations, "disable webhook")
        page.goto("/portal/keys/")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator(f'tr[data-key-prefix="{visible_prefix(rotated)}"]').get_by_role(
            "button", name="Revoke").click()
        expect(page.locator(".messages")).to_contain_text("Revoked")
        revoked = assert_reload_sends_nothing_again(page, navigations, "revoke key")
        assert revoked["audit rows"] > counts["audit rows"]
        page.goto("/portal/members/")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator('tr[data-member="colleague@example.test"]').get_by_role(
            "button", name="Remove").click()
        expect(page.locator(".messages")).to_contain_text("Removed")
        assert assert_reload_sends_nothing_again(
            page, navigations, "remove member")["memberships"] == 1

        # Redeem a code on the billing page: one grant
        _, code = off_loop(code_create, credits=1_234)
        page.goto("/portal/billing/")
        page.locator("#id_code").fill(code)
        page.get_by_role("button", name="Redeem").click()
        expect(page.locator(".messages")).to_contain_text("1,234 credits were added")
        assert_reload_sends_nothing_again(page, navigations, "redeem a code")
        assert off_loop(lambda: CodeRedemption.objects.count()) == 1
    finally:
        receiver.stop()


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
    "provider-keys": "/portal/provider-keys/",
    "reference": "/portal/reference/",
    "reference-management": "/portal/reference/management/",
}
SIGNED_OUT_PAGES = {
    "sign-in": "/portal/signin/",
    "sign-up": "/portal/signup/",
    "password-reset": "/portal/password-reset/",
}
DESKTOP = {"width": 1280, "height": 900}


def check_every_width(page: Page, name: str, path: str | None = None) -> None:
    """A page (`path`, or the one open) fits 390 px and 375 px; screenshots at 390 and desktop.

    390 px is the phone width issue #22 names, 375 px an older, smaller phone.
    Written as `<name>-390.png` and `desktop-<name>.png`.
    """
    page.set_viewport_size(PHONE)
    if path is not None:
        page.goto(path)
    assert_fits(page, f"{name}-390", PHONE["width"])
    screenshot(page, f"{name}-390")
    page.set_viewport_size(MOBILE)
    assert_fits(page, name, MOBILE["width"])
    page.set_viewport_size(DESKTOP)
    screenshot(page, f"desktop-{name}")


def assert_on_screen(page: Page, scope: Any, buttons: tuple[str, ...], width: int) -> None:
    """Each named button in `scope` is on a `width`-pixel screen, no sideways scrolling."""
    for button in buttons:
        box = scope.get_by_role("button", name=button).first.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (button, box)


def test_every_page_fits_390_and_375_pixel_screens_and_loads_nothing_from_other_hosts(
    browser: Any, live_gateway: Any, fake_upstream: Any, settings: Any
) -> None:
    # Given an organization with a key, usage, a member, and a webhook that has been sent an event
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    receiver = Receiver()
    page, requested = open_page(browser, live_gateway, PHONE)
    sign_up(page, email="phone@example.test", organization="Pocket Co")
    check_every_width(page, "keys-empty")
    secret = create_key(page, "a key with a rather long descriptive name")
    check_every_width(page, "key-created")
    client = openai.OpenAI(api_key=secret, base_url=live_gateway.api_base, max_retries=0)
    completions = [client.chat.completions.create(model=model, max_tokens=20,
                                                  messages=[{"role": "user", "content": "Hi"}])
                   for model in ("openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet")]
    off_loop(usage_rollup)

    def organization_setup() -> tuple[int, int]:
        key = APIKey.objects.select_related("organization").get(prefix=visible_prefix(secret))
        email = "a.colleague.with.a.long.address@pocket-company.example.test"
        colleague = get_user_model().objects.create_user(username=email, email=email)
        membership_add(organization=key.organization, user=colleague)
        endpoint, _ = webhooks.webhook_endpoint_create(
            organization=key.organization, url=receiver.url + "/a/rather/long/path/for/hooks",
            events=["key.revoked", "balance.low"])
        webhooks.webhook_test_send(endpoint=endpoint, actor=None)
        return key.pk, endpoint.pk

    try:
        key_id, endpoint_id = off_loop(organization_setup)
    finally:
        receiver.stop()
    pages = {**PAGES,
             "key-edit": f"/portal/keys/{key_id}/edit",
             "webhook-detail": f"/portal/webhooks/{endpoint_id}/",
             "receipt": f"/portal/usage/{completions[0].id}/"}

    # Then every page fits a phone, at 390 px and at 375 px
    for name, path in pages.items():
        check_every_width(page, name, path)

    # And the actions of the pages with tables are on the screen at 390 px
    page.set_viewport_size(PHONE)
    page.goto(pages["webhook-detail"])
    expect(page.locator("#deliveries tbody tr").first).to_contain_text("delivered")
    assert_on_screen(page, page.locator("main"), ("Disable", "Send a test event", "Delete"),
                     PHONE["width"])
    assert_on_screen(page, page.locator("#deliveries tbody tr").first, ("Redeliver",),
                     PHONE["width"])
    page.goto(pages["members"])
    assert_on_screen(page, page.locator("tr[data-member]").last, ("Change", "Remove"),
                     PHONE["width"])

    # And so do the pages for the signed out
    page.get_by_role("button", name="Sign out").click()
    for name, path in SIGNED_OUT_PAGES.items():
        check_every_width(page, name, path)
    assert_only_local(requested, live_gateway)


def test_the_readmes_screenshots_are_desktop_screenshots_of_this_suite_and_small() -> None:
    """The README shows screenshots this suite writes, copied to docs/screenshots/."""
    root = Path(__file__).resolve().parents[2]
    links = re.findall(r"!\[[^\]]+\]\((docs/screenshots/[^)]+)\)",
                       (root / "README.md").read_text())
    assert {Path(link).name for link in links} == {
        "desktop-overview.png", "desktop-usage.png", "desktop-staff-organization.png"}
    for link in links:
        image = (root / link).read_bytes()
        assert image[:8] == b"\x89PNG\r\n\x1a\n", link
        assert len(image) < 300_000, f"{link} is {len(image):,} bytes"
        width = int.from_bytes(image[16:20], "big")  # the IHDR chunk's width
        assert width == DESKTOP["width"], f"{link} is {width}px wide, not a desktop screenshot"


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
