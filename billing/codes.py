"""Redemption codes: credits staff hand out as a code, redeemed by a member once per organization.

A code is 16 random characters from an alphabet without look-alikes (80 bits),
shown as NOVA-XXXX-XXXX-XXXX-XXXX; only its keyed hash is stored (as API keys
are), so a database dump reveals no code. Redeeming locks the code's row, so
two members redeeming at once, or more organizations than a code has uses,
cannot both pass the check; the grant goes through the ledger, idempotent by
(code, organization), in the same transaction. Failed attempts are audited,
and after `REDEMPTION_FAILURES_PER_HOUR` of them an organization is refused
for the rest of the hour: 80 bits cannot be guessed, but a member trying codes
in a loop should still be stopped and seen.
"""

from __future__ import annotations

import datetime as dt
import secrets

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.keys import hash_secret
from accounts.models import AuditEvent, Organization
from accounts.services import audit_record
from billing.ledger import Kind, account_for_organization, credits_grant
from billing.models import CodeRedemption, LedgerEntry, RedemptionCode

CODE_PREFIX = "NOVA"
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I, O, 0, 1
_CODE_CHARACTERS = 16
REFUSED_ACTION = "credits.code_refused"


class CodeRefused(ValueError):
    """A code that cannot be redeemed; the message is what the member is told, `why` staff."""

    def __init__(self, message: str, *, why: str = "") -> None:
        super().__init__(message)
        self.why = why


def _normalised(code: str) -> str:
    """What a member typed, as the code's characters alone: case, spaces and dashes do not count."""
    plain = "".join(code.split()).replace("-", "").upper()
    return plain.removeprefix(CODE_PREFIX)


def _hash(code: str) -> str:
    # API keys' keyed hash, over a label of its own: a code's hash never equals a key's.
    return hash_secret("redemption-code:" + _normalised(code))


def code_create(*, credits: int, max_uses: int = 1, expires_at: dt.datetime | None = None,
                note: str = "", created_by: AbstractBaseUser | None = None,
                ) -> tuple[RedemptionCode, str]:
    """Make a code; returns it with the code itself, which exists only in the return value."""
    if credits < 1 or max_uses < 1:
        raise ValueError("a code is worth at least one credit and has at least one use")
    characters = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_CHARACTERS))
    shown = "-".join([CODE_PREFIX, *(characters[i:i + 4] for i in range(0, _CODE_CHARACTERS, 4))])
    with transaction.atomic():
        code = RedemptionCode.objects.create(
            code_hash=_hash(shown), prefix=shown[:9], credits=credits, max_uses=max_uses,
            expires_at=expires_at, note=note, created_by_id=_user_id(created_by),
        )
        audit_record(action="credits.code_created", actor=created_by, target=str(code),
                     after={"credits": credits, "max_uses": max_uses,
                            "expires_at": expires_at.isoformat() if expires_at else None},
                     reason=note)
    return code, shown


def _user_id(user: AbstractBaseUser | None) -> int | None:
    return user.pk if user is not None and user.is_authenticated else None


def _recent_failures(organization: Organization, now: dt.datetime) -> int:
    return AuditEvent.objects.filter(organization=organization, action=REFUSED_ACTION,
                                     created_at__gte=now - dt.timedelta(hours=1)).count()


def _refuse(organization: Organization, user: AbstractBaseUser | None, why: str,
            message: str) -> CodeRefused:
    # Outside the redemption's transaction (rolled back), so the attempt stays counted.
    audit_record(action=REFUSED_ACTION, actor=user, organization=organization,
                 target=f"organization {organization.pk}", after={"why": why})
    return CodeRefused(message)


def code_redeem(*, organization: Organization, user: AbstractBaseUser | None,
                code: str) -> LedgerEntry:
    """Grant the code's credits to `organization`, once; CodeRefused says why not."""
    now = timezone.now()
    if _recent_failures(organization, now) >= settings.REDEMPTION_FAILURES_PER_HOUR:
        raise CodeRefused("Too many codes that did not work: try again in an hour.")
    try:
        with transaction.atomic():
            return _redeem_locked(organization=organization, user=user, code=code, now=now)
    except CodeRefused as refused:
        raise _refuse(organization, user, refused.why, str(refused)) from None


def _redeem_locked(*, organization: Organization, user: AbstractBaseUser | None, code: str,
                   now: dt.datetime) -> LedgerEntry:
    found = (RedemptionCode.objects.select_for_update()
             .filter(code_hash=_hash(code)).first())
    # Unknown and switched off read alike: a guesser learns nothing from the answer.
    if found is None or not found.is_active:
        raise CodeRefused("This code is not valid.",
                          why="unknown" if found is None else "inactive")
    if found.expires_at is not None and found.expires_at <= now:
        raise CodeRefused("This code has expired.", why="expired")
    if CodeRedemption.objects.filter(code=found, organization=organization).exists():
        raise CodeRefused("Your organization has already redeemed this code.", why="again")
    if found.uses >= found.max_uses:
        raise CodeRefused("This code has been used up.", why="used_up")
    entry = credits_grant(
        account=account_for_organization(organization=organization), amount=found.credits,
        reason=f"redemption code {found.prefix}…", actor=user, kind=Kind.GRANT,
        idempotency_key=f"code:{found.pk}:organization:{organization.pk}",
    )
    RedemptionCode.objects.filter(pk=found.pk).update(uses=F("uses") + 1)
    CodeRedemption.objects.create(code=found, organization=organization,
                                  redeemed_by_id=_user_id(user), entry=entry)
    return entry
