"""Limits on what a client may send, taken from the columns that will store it.

A number the column cannot hold, or an id that no row can have, is the
client's mistake: it gets a 400 naming the field, or a 404, before any query.
Sent on to the database instead, it fails there (PostgreSQL: "integer out of
range", "cannot contain NUL characters"; SQLite: an OverflowError in the
driver), and the caller sees a 500 that says "retry safe" for a request that
can never succeed.
"""

from __future__ import annotations

from typing import TypedDict

from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations
from django.urls import register_converter


class IntegerBounds(TypedDict):
    """The keyword arguments of a form's or serializer's IntegerField that bound it."""

    min_value: int
    max_value: int


def column_bounds(model: type[models.Model], field_name: str, *,
                  minimum: int | None = None) -> IntegerBounds:
    """`min_value` and `max_value` for a form's or serializer's IntegerField storing into
    `model.field_name`, narrowed below by `minimum` (the rule's own floor, e.g. 1).

    The range is Django's portable one for the field's type (PositiveIntegerField:
    0..2**31-1, BigIntegerField: 64-bit signed), what PostgreSQL's column holds, not
    the current connection's: SQLite would take a 64-bit number into a
    PositiveIntegerField, and a request accepted in development would fail in production.
    """
    field = model._meta.get_field(field_name)
    if isinstance(field, models.ForeignKey):  # it holds what the key it points to holds
        field = field.target_field
    assert isinstance(field, models.Field), f"{model.__name__}.{field_name} is no column"
    low, high = BaseDatabaseOperations.integer_field_ranges[field.get_internal_type()]
    if minimum is not None:
        low = max(low, minimum)
    return {"min_value": low, "max_value": high}


class TextIdConverter:
    """A path segment naming a row by a text id (`<text_id:generation_id>`): any
    characters but `/` and NUL.

    PostgreSQL's text cannot hold a NUL, so a lookup with one fails instead of
    finding nothing; refused by the URL, such an id is the 404 of any unknown one.
    """

    regex = "[^/\x00]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


# Registered once, here, for the URLconfs that import this module.
register_converter(TextIdConverter, "text_id")
