"""Management API (DRF) for the members of the caller's organization, and who may manage what.

The API keys' endpoints are in billing/keys_api.py: a key carries its credit
cap, a billing quota. Every lookup is filtered by the caller's organization,
so another organization's object is a 404, never a 403 and never its data.
"""

from __future__ import annotations

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import services
from accounts.drf import Caller, caller_for, data_list
from accounts.models import Membership, Organization
from accounts.scopes import KEYS_WRITE
from novakit.errors import ApiError, forbidden, invalid_request

# Who may manage members (and webhooks), and who may manage API keys.
MANAGERS = (Membership.Role.OWNER, Membership.Role.ADMIN)
KEY_MANAGERS = (*MANAGERS, Membership.Role.DEVELOPER)


class MemberSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.CharField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "username", "email", "role", "created_at"]


class InviteSerializer(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Membership.Role.choices,
                                   default=Membership.Role.DEVELOPER)


class RoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)


def _member_reader(request: Request) -> Caller:
    caller = caller_for(request, scope=KEYS_WRITE)
    if caller.role is None:
        raise forbidden("Members are managed by signed-in owners and admins, not API keys")
    return caller


def _member_manager(request: Request) -> Caller:
    caller = _member_reader(request)
    if caller.role not in MANAGERS:
        raise forbidden("Only owners and admins manage members")
    return caller


def _members(caller: Caller):  # type: ignore[no-untyped-def]
    return Membership.objects.filter(organization_id=caller.organization_id).select_related("user")


@extend_schema(methods=["GET"], operation_id="members_list",
               responses=data_list(MemberSerializer), summary="List members")
@extend_schema(methods=["POST"], request=InviteSerializer, responses={201: MemberSerializer},
               summary="Invite a member")
@api_view(["GET", "POST"])
def members(request: Request) -> Response:
    if request.method == "GET":
        caller = _member_reader(request)
        return Response({"data": MemberSerializer(_members(caller).order_by("created_at"),
                                                  many=True).data})
    caller = _member_manager(request)
    payload = InviteSerializer(data=request.data)
    payload.is_valid(raise_exception=True)
    organization = Organization.objects.get(pk=caller.organization_id)
    try:
        membership, is_new = services.membership_invite(
            organization=organization, email=payload.validated_data["email"],
            role=payload.validated_data["role"], actor=request.user,
        )
    except ValueError as exc:
        raise invalid_request(str(exc), param="email") from exc
    from accounts.emails import send_invitation

    transaction.on_commit(lambda: send_invitation(membership=membership, is_new_user=is_new,
                                                  request=request))
    return Response(MemberSerializer(membership).data, status=status.HTTP_201_CREATED)


@extend_schema(
    request=RoleSerializer,
    responses={200: MemberSerializer, 204: OpenApiResponse(description="removed")},
    summary="Change a role or remove a member",
)
@api_view(["PATCH", "DELETE"])
def member_detail(request: Request, member_id: int) -> Response:
    caller = _member_manager(request)
    membership = get_object_or_404(_members(caller), pk=member_id)
    try:
        if request.method == "DELETE":
            services.membership_remove(membership=membership, actor=request.user)
            return Response(status=status.HTTP_204_NO_CONTENT)
        payload = RoleSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.membership_set_role(membership=membership, role=payload.validated_data["role"],
                                     actor=request.user)
    except ValueError as exc:
        raise ApiError("conflict", str(exc)) from exc
    return Response(MemberSerializer(membership).data)
