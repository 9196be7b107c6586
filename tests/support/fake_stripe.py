"""A fake Stripe on a loopback port: the part of its API a top-up uses, and its webhooks.

It speaks what the official `stripe` library sends (form-encoded parameters
with bracketed keys, a Bearer secret key, an Idempotency-Key) and answers
the JSON objects Stripe would: `POST /v1/checkout/sessions` opens a session
whose `url` is a payment page here (`/pay/<id>`, a form with a Pay button,
for the browser); paying it (`pay()`, or the button) completes the session,
creates its PaymentIntent and builds the two events Stripe sends,
`checkout.session.completed` and `payment_intent.succeeded`; `refund()` and
`dispute()` build `charge.refunded` and `charge.dispute.closed`; a session that
asked to save the card leaves a customer and payment method that
`POST /v1/payment_intents` charges off-session (or declines, `declined`). Events are
signed exactly as Stripe signs them (`Stripe-Signature: t=<unix>,v1=<hex
HMAC-SHA256 of "<t>.<body>">`), so the application's check is the real one.
The button delivers both events to `webhook_url` before sending the browser
back to the session's `success_url`; a test may instead deliver them itself,
twice, out of order, or forged (`deliver`).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx

SECRET_KEY = "sk_test_novakit_fake_0123456789"
WEBHOOK_SECRET = "whsec_novakit_fake_0123456789"


def form_params(body: str) -> dict[str, Any]:
    """Stripe's form encoding (`a[b][0][c]=v`) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for part, following in zip(parts, [*parts[1:], None], strict=True):
            if following is None:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(key.isdigit() for key in node):
        return [_lists(node[key]) for key in sorted(node, key=int)]
    return {key: _lists(value) for key, value in node.items()}


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, *, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256)
    return f"t={stamp},v1={digest.hexdigest()}"


@dataclass
class FakeStripe:
    host: str = "127.0.0.1"
    port: int = 0
    webhook_url: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every API request: (method, path, headers, parameters).
    requests: list[tuple[str, str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    # Status codes of the webhook deliveries made by the Pay button and by off-session charges.
    deliveries: list[int] = field(default_factory=list)
    # Saved payment methods the bank refuses to charge off-session.
    declined: set[str] = field(default_factory=set)
    _by_idempotency_key: dict[str, str] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        self.sessions.clear()
        self.intents.clear()
        self.requests.clear()
        self.deliveries.clear()
        self._by_idempotency_key.clear()
        self.declined.clear()
        self.webhook_url = ""

    # --- what Stripe does ------------------------------------------------------------
    def create_session(self, params: dict[str, Any], idempotency_key: str | None
                       ) -> dict[str, Any]:
        if idempotency_key and idempotency_key in self._by_idempotency_key:
            return self.sessions[self._by_idempotency_key[idempotency_key]]
        session_id = f"cs_test_{secrets.token_hex(12)}"
        items = params.get("line_items") or []
        amount = sum(int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
                     for item in items)
        session = {
            "id": session_id, "object": "checkout.session", "mode": params.get("mode"),
            "amount_total": amount, "currency": items[0]["price_data"]["currency"],
            "client_reference_id": params.get("client_reference_id"),
            "customer_email": params.get("customer_email"),
            "metadata": params.get("metadata") or {},
            "payment_intent": None, "payment_status": "unpaid", "status": "open",
            "success_url": params.get("success_url"), "cancel_url": params.get("cancel_url"),
            "url": f"{self.api_base}/pay/{session_id}",
            "_intent_metadata": (params.get("payment_intent_data") or {}).get("metadata") or {},
            "_save_card": (params.get("payment_intent_data") or {}).get(
                "setup_future_usage") == "off_session",
            "customer": (f"cus_test_{secrets.token_hex(8)}"
                         if params.get("customer_creation") == "always" else None),
            "_name": items[0]["price_data"]["product_data"]["name"],
        }
        self.sessions[session_id] = session
        if idempotency_key:
            self._by_idempotency_key[idempotency_key] = session_id
        return session

    def pay(self, session_id: str) -> list[dict[str, Any]]:
        """Complete the session as a paying buyer would; the events Stripe would send."""
        session = self.sessions[session_id]
        intent_id = f"pi_test_{secrets.token_hex(12)}"
        intent = {"id": intent_id, "object": "payment_intent", "status": "succeeded",
                  "amount": session["amount_total"], "amount_received": session["amount_total"],
                  "currency": session["currency"], "metadata": session["_intent_metadata"],
                  "customer": session["customer"],
                  "payment_method": f"pm_test_{secrets.token_hex(8)}",
                  "setup_future_usage": "off_session" if session["_save_card"] else None}
        self.intents[intent_id] = intent
        session.update(payment_intent=intent_id, payment_status="paid", status="complete")
        return [self.event("checkout.session.completed", self.public(session)),
                self.event("payment_intent.succeeded", intent)]

    def charge_saved_card(self, params: dict[str, Any], idempotency_key: str | None
                          ) -> tuple[int, dict[str, Any]]:
        """An off-session PaymentIntent, confirmed at once: succeeded (its event delivered
        before the answer, as Stripe would soon after) or declined (402, a card error)."""
        if idempotency_key and idempotency_key in self._by_idempotency_key:
            return 200, self.intents[self._by_idempotency_key[idempotency_key]]
        saved = {intent.get("payment_method"): intent for intent in self.intents.values()
                 if intent.get("setup_future_usage") == "off_session"}
        method = params.get("payment_method")
        if method not in saved or saved[method]["customer"] != params.get("customer"):
            return 400, {"error": {"type": "invalid_request_error",
                                   "message": f"No such PaymentMethod: '{method}'"}}
        if method in self.declined:
            return 402, {"error": {"type": "card_error", "code": "card_declined",
                                   "decline_code": "insufficient_funds",
                                   "message": "Your card was declined."}}
        intent_id = f"pi_test_{secrets.token_hex(12)}"
        intent = {"id": intent_id, "object": "payment_intent", "status": "succeeded",
                  "amount": int(params["amount"]), "amount_received": int(params["amount"]),
                  "currency": params["currency"], "metadata": params.get("metadata") or {},
                  "customer": params["customer"], "payment_method": method}
        self.intents[intent_id] = intent
        if idempotency_key:
            self._by_idempotency_key[idempotency_key] = intent_id
        self.deliveries.append(self.deliver(self.event("payment_intent.succeeded",
                                                       intent)).status_code)
        return 200, intent

    def refund(self, intent_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund `amount` cents more (all that is left by default): the event Stripe sends,
        `charge.refunded`, whose charge carries every refund so far."""
        intent = self.intents[intent_id]
        already = intent.get("_refunded", 0)
        intent["_refunded"] = min(intent["amount"], already + (
            intent["amount"] - already if amount is None else amount))
        return self.event("charge.refunded", self._charge(intent))

    def dispute(self, intent_id: str, status: str = "lost") -> dict[str, Any]:
        """The buyer's bank disputed the whole charge, and it closed as `status`."""
        intent = self.intents[intent_id]
        return self.event("charge.dispute.closed", {
            "id": f"dp_test_{secrets.token_hex(12)}", "object": "dispute",
            "amount": intent["amount"], "currency": intent["currency"],
            "charge": f"ch_{intent_id}", "payment_intent": intent_id, "status": status})

    @staticmethod
    def _charge(intent: dict[str, Any]) -> dict[str, Any]:
        refunded = intent.get("_refunded", 0)
        return {"id": f"ch_{intent['id']}", "object": "charge", "amount": intent["amount"],
                "amount_refunded": refunded, "currency": intent["currency"],
                "payment_intent": intent["id"], "refunded": refunded == intent["amount"],
                "metadata": {}}

    @staticmethod
    def public(session: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in session.items() if not key.startswith("_")}

    @staticmethod
    def event(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"evt_{secrets.token_hex(12)}", "object": "event",
                "api_version": "2025-01-27.acacia", "created": int(time.time()),
                "livemode": False, "type": event_type, "data": {"object": dict(obj)}}

    def deliver(self, event: dict[str, Any], *, secret: str = WEBHOOK_SECRET,
                timestamp: int | None = None, signature: str | None = None) -> httpx.Response:
        """POST one event to the webhook, signed with `secret` (or with `signature` as given)."""
        payload = json.dumps(event).encode()
        header = signature if signature is not None else sign(payload, secret,
                                                                timestamp=timestamp)
        return httpx.post(self.webhook_url, content=payload, timeout=10,
                          headers={"Stripe-Signature": header,
                                   "Content-Type": "application/json"})

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> FakeStripe:
        self._server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="fake-stripe",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _handler(fake: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any]) -> None:
            self._send(status, json.dumps(data).encode())

        def _body(self) -> str:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()

        def do_POST(self) -> None:
            body = self._body()
            if self.path.startswith("/pay/"):
                self._pay(self.path.removeprefix("/pay/"))
                return
            if self.headers.get("Authorization") != f"Bearer {SECRET_KEY}":
                self._json(401, {"error": {"type": "invalid_request_error",
                                           "message": "Invalid API Key provided"}})
                return
            params = form_params(body)
            fake.requests.append(("POST", self.path, dict(self.headers), params))
            if self.path == "/v1/checkout/sessions":
                session = fake.create_session(params, self.headers.get("Idempotency-Key"))
                self._json(200, fake.public(session))
                return
            if self.path == "/v1/payment_intents":
                self._json(*fake.charge_saved_card(params, self.headers.get("Idempotency-Key")))
                return
            self._json(404, {"error": {"type": "invalid_request_error",
                                       "message": f"Unrecognized request URL {self.path}"}})

        def do_GET(self) -> None:
            if self.path.startswith("/pay/"):
                session = fake.sessions.get(self.path.removeprefix("/pay/"))
                if session is None:
                    self._send(404, b"no such checkout", "text/plain")
                    return
                amount = f"{session['amount_total'] / 100:.2f} {session['currency'].upper()}"
                page = (f"<!doctype html><title>Fake Stripe Checkout</title>"
                        f"<h1>{html.escape(session['_name'])}</h1><p id='amount'>{amount}</p>"
                        f"<form method='post'><button id='pay'>Pay {amount}</button></form>")
                self._send(200, page.encode(), "text/html; charset=utf-8")
                return
            self._json(404, {"error": {"type": "invalid_request_error", "message": "not here"}})

        def _pay(self, session_id: str) -> None:
            session = fake.sessions.get(session_id)
            if session is None or session["status"] != "open":
                self._send(404, b"no open checkout", "text/plain")
                return
            for event in fake.pay(session_id):
                fake.deliveries.append(fake.deliver(event).status_code)
            back = str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session_id)
            self._send(303, b"", "text/plain", headers={"Location": back})

    return Handler
