"""The developer portal, mounted at /portal/.

Django's sign-in, sign-out and password-reset views keep their usual,
un-namespaced names ("login", "password_reset_confirm", ...): Django's own
views and emails, and accounts/emails.py, reverse them by those names. The
portal's pages are in the "portal" namespace.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts.forms import EmailAuthenticationForm
from novakit import inputs  # noqa: F401  (registers the text_id converter)
from portal.views import (
    account,
    billing,
    keys,
    members,
    playground,
    provider_keys,
    reference,
    usage,
    webhooks,
)

portal_patterns = [
    path("", account.home, name="home"),
    path("signup/", account.signup, name="signup"),
    path("organization/switch", account.organization_switch, name="organization-switch"),
    path("keys/", keys.keys, name="keys"),
    path("keys/<int:key_id>/edit", keys.key_edit, name="key-edit"),
    path("keys/<int:key_id>/revoke", keys.key_revoke, name="key-revoke"),
    path("keys/<int:key_id>/rotate", keys.key_rotate, name="key-rotate"),
    path("keys/<int:key_id>/created", keys.key_created, name="key-created"),
    path("members/", members.members, name="members"),
    path("members/<int:member_id>/role", members.member_role, name="member-role"),
    path("members/<int:member_id>/remove", members.member_remove, name="member-remove"),
    path("provider-keys/", provider_keys.provider_keys_page, name="provider-keys"),
    path("provider-keys/<int:key_id>/remove", provider_keys.provider_key_remove,
         name="provider-key-remove"),
    path("webhooks/", webhooks.webhooks_page, name="webhooks"),
    path("webhooks/<int:endpoint_id>/", webhooks.webhook_detail, name="webhook-detail"),
    path("webhooks/<int:endpoint_id>/created", webhooks.webhook_created, name="webhook-created"),
    path("webhooks/<int:endpoint_id>/active", webhooks.webhook_set_active, name="webhook-active"),
    path("webhooks/<int:endpoint_id>/delete", webhooks.webhook_delete, name="webhook-delete"),
    path("webhooks/<int:endpoint_id>/test", webhooks.webhook_test, name="webhook-test"),
    path("webhooks/<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver",
         webhooks.webhook_redeliver, name="webhook-redeliver"),
    path("usage/", usage.usage, name="usage"),
    path("usage/<text_id:generation_id>/", usage.usage_receipt, name="usage-receipt"),
    path("billing/", billing.billing, name="billing"),
    path("billing/ledger.csv", billing.ledger_csv, name="ledger-csv"),
    path("billing/redeem/", billing.redeem_code, name="redeem-code"),
    path("billing/topups/", billing.topup_start_view, name="topup-start"),
    path("billing/auto-recharge/", billing.auto_recharge_update, name="auto-recharge"),
    path("billing/topups/return", billing.topup_return, name="topup-return"),
    path("billing/topups/<int:payment_id>/", billing.topup_receipt, name="topup"),
    path("playground/", playground.playground, name="playground"),
    path("playground/stream", playground.playground_stream, name="playground-stream"),
    path("reference/", reference.api_reference, name="reference"),
    path("reference/management/", reference.management_reference, name="reference-management"),
]

urlpatterns = [
    path("signin/", auth_views.LoginView.as_view(
        authentication_form=EmailAuthenticationForm, redirect_authenticated_user=True),
        name="login"),
    path("signout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password-reset/", auth_views.PasswordResetView.as_view(
        subject_template_name="registration/portal_password_reset_subject.txt",
        email_template_name="registration/portal_password_reset_email.txt"),
        name="password_reset"),
    path("password-reset/sent/", auth_views.PasswordResetDoneView.as_view(),
         name="password_reset_done"),
    path("password-reset/<uidb64>/<token>/", account.PasswordResetConfirm.as_view(),
         name="password_reset_confirm"),
    path("password-reset/done/", auth_views.PasswordResetCompleteView.as_view(),
         name="password_reset_complete"),
    path("", include((portal_patterns, "portal"))),
]
