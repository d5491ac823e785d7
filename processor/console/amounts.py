"""Amounts as users type them: read in their language, checked as the API checks them.

"1,050" is 1050 in English and "1,05" is 1.05 in Greek (Babel's `parse_decimal`,
strict: a grouping sign out of place is refused, never guessed); the API gets the
plain "1050". The checks are the API's own bounds (schemas.types.MAX_AMOUNT, the rate
card's decimals), made before a review step asks to confirm, in the user's language;
`api_messages` puts what the API still refuses in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final, Literal

from babel.numbers import NumberFormatError, parse_decimal

from processor.console.i18n import N_, Translator
from processor.http.admin_requests import decimal_places
from schemas.types import MAX_AMOUNT

__all__ = ["Checked", "Rule", "api_message", "check_amount", "plain_amount"]

Rule = Literal["positive", "non_negative"]
EXAMPLE: Final = N_("Enter an amount such as 50.00.")


@dataclass(frozen=True)
class Checked:
    """An amount read and checked: `value` is the API's plain text ("" when refused)."""

    value: str
    error: str | None


def _read(raw: str, t: Translator) -> Decimal | None:
    text = raw.strip().replace(" ", "").replace("\xa0", "")
    if not text or "e" in text.lower():  # parse_decimal takes "1e5"; nobody types it
        return None
    try:
        value = parse_decimal(text, locale=t.locale, strict=True)
    except NumberFormatError:
        return None
    return value if value.is_finite() else None


def plain_amount(raw: str) -> Decimal | None:
    """An amount the console wrote itself (a review step's hidden field): plain text."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _problem(value: Decimal, t: Translator, rule: Rule, places: int | None) -> str | None:
    if rule == "positive" and value <= 0:
        return t.gettext("Must be more than zero.")
    if value < 0:
        return t.gettext("Must not be negative.")
    if value > MAX_AMOUNT:
        return too_large(t)
    if places is not None and decimal_places(value) > places:
        return t.gettext("Too many decimal places (at most %(places)s).") % {"places": places}
    return None


def too_large(t: Translator) -> str:
    return t.gettext("Must be at most %(max)s.") % {"max": t.number(MAX_AMOUNT)}


def check_amount(
    raw: str, t: Translator, rule: Rule, places: int | None, *, typed: bool = True
) -> Checked:
    """`raw` as the user typed it (`typed`), else as the console wrote it; `places`
    the rate card's decimals when known."""
    value = _read(raw, t) if typed else plain_amount(raw)
    if value is None:
        return Checked("", t.gettext(EXAMPLE))
    error = _problem(value, t, rule, places)
    return Checked("" if error else format(value, "f"), error)


# The API's 422 field errors (processor/http/admin_requests.py): money bounds are the
# contract validator's `value_error`s, told apart by their words (schemas/types.py).
_BY_TYPE: Final = {
    "too_many_decimals": N_("Too many decimal places."),
    "greater_than": N_("Must be more than zero."),
    "greater_than_equal": N_("Must not be negative."),
    "decimal_parsing": EXAMPLE,
    "string_pattern_mismatch": EXAMPLE,
    "currency_mismatch": N_("Another currency than the rate card's."),
}
_BY_WORDS: Final = (
    ("must be a decimal number", EXAMPLE),
    ("must be greater than", N_("Must be more than zero.")),
    ("must be at least", N_("Must not be negative.")),
)


def api_message(kind: str, words: str, t: Translator) -> str:
    """One API field error in the user's language; the API's words when unknown."""
    if kind == "less_than_equal" or words.startswith("must be at most"):
        return too_large(t)
    if kind in _BY_TYPE:
        return t.gettext(_BY_TYPE[kind])
    for start, message in _BY_WORDS:
        if words.startswith(start):
            return t.gettext(message)
    return words
