"""Emails to members: invitations (with a link to set a password), and notices to owners."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.models import Membership, Organization


def owners_notify(*, organization: Organization, subject: str, message: str) -> None:
    """Email the organization's owners, once the transaction that decided to commits."""
    owners = list(
        Membership.objects.filter(organization=organization, role=Membership.Role.OWNER)
        .exclude(user__email="").values_list("user__email", flat=True)
    )
    if owners:
        transaction.on_commit(lambda: send_mail(
            subject=subject, message=message, from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=owners))


def send_invitation(*, membership: Membership, is_new_user: bool, request: Any) -> None:
    user = membership.user
    organization = membership.organization
    lines = [f"You have been added to {organization.name} on NovaKit as {membership.role}."]
    if is_new_user:
        uid = urlsafe_base64_encode(force_bytes(user.pk))
        token = default_token_generator.make_token(user)
        path = reverse("password_reset_confirm", kwargs={"uidb64": uid, "token": token})
        lines.append(f"Choose a password to sign in: {request.build_absolute_uri(path)}")
    else:
        lines.append(f"Sign in: {request.build_absolute_uri(reverse('portal:home'))}")
    send_mail(
        subject=f"You have been invited to {organization.name} on NovaKit",
        message="\n\n".join(lines),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[user.email],
    )
