"""The developer portal, mounted at /portal/.

Django's sign-in, sign-out and password-reset views keep their usual,
un-namespaced names ("login", "password_reset_confirm", ...): Django's own
views and emails, and accounts/emails.py, reverse them by those names. The
portal's pages are in the "portal" namespace.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts import views as accounts_views
from accounts import webhook_views
from accounts.forms import EmailAuthenticationForm
from billing import views as billing_views
from completions import views as completions_views
from novakit import inputs  # noqa: F401  (registers the text_id converter)

portal_patterns = [
    path("", accounts_views.home, name="home"),
    path("signup/", accounts_views.signup, name="signup"),
    path("organization/switch", accounts_views.organization_switch, name="organization-switch"),
    path("keys/", accounts_views.keys, name="keys"),
    path("keys/<int:key_id>/revoke", accounts_views.key_revoke, name="key-revoke"),
    path("keys/<int:key_id>/rotate", accounts_views.key_rotate, name="key-rotate"),
    path("keys/<int:key_id>/created", accounts_views.key_created, name="key-created"),
    path("members/", accounts_views.members, name="members"),
    path("members/<int:member_id>/role", accounts_views.member_role, name="member-role"),
    path("members/<int:member_id>/remove", accounts_views.member_remove, name="member-remove"),
    path("webhooks/", webhook_views.webhooks_page, name="webhooks"),
    path("webhooks/<int:endpoint_id>/", webhook_views.webhook_detail, name="webhook-detail"),
    path("webhooks/<int:endpoint_id>/created", webhook_views.webhook_created,
         name="webhook-created"),
    path("webhooks/<int:endpoint_id>/active", webhook_views.webhook_set_active,
         name="webhook-active"),
    path("webhooks/<int:endpoint_id>/delete", webhook_views.webhook_delete,
         name="webhook-delete"),
    path("usage/", completions_views.usage, name="usage"),
    path("usage/<text_id:generation_id>/", completions_views.usage_receipt, name="usage-receipt"),
    path("billing/", billing_views.billing, name="billing"),
    path("billing/ledger.csv", billing_views.ledger_csv, name="ledger-csv"),
    path("playground/", completions_views.playground, name="playground"),
    path("playground/stream", completions_views.playground_stream, name="playground-stream"),
    path("reference/", completions_views.api_reference, name="reference"),
    path("reference/management/", completions_views.management_reference,
         name="reference-management"),
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
    path("password-reset/<uidb64>/<token>/", accounts_views.PasswordResetConfirm.as_view(),
         name="password_reset_confirm"),
    path("password-reset/done/", auth_views.PasswordResetCompleteView.as_view(),
         name="password_reset_complete"),
    path("", include((portal_patterns, "portal"))),
]
