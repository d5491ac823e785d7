"""Languages of the console: English and Greek, per user, with Babel.

Messages are the English text itself (gettext style); the Greek catalog is
`translations/el/LC_MESSAGES/messages.po` in the repository, read at start-up (no
compiled .mo to keep in step). Money and dates are formatted by Babel's CLDR data
for the user's locale: `12,34 €` and `3 Δεκ 2026` in Greek.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Final

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal, get_currency_precision

from processor.http.admin_requests import decimal_places

__all__ = [
    "DEFAULT",
    "LANGUAGES",
    "N_",
    "Translator",
    "catalog_path",
    "column_places",
    "currency_places",
    "places_needed",
    "translator",
]

LANGUAGES: Final = {"en": "English", "el": "Ελληνικά"}
DEFAULT: Final = "en"
# Babel locales (territory for currency and date conventions).
_LOCALES: Final = {"en": "en_US", "el": "el_GR"}
TRANSLATIONS: Final = Path(__file__).resolve().parent / "translations"


def _decimal(amount: str | Decimal) -> Decimal | None:
    try:
        return Decimal(str(amount))
    except InvalidOperation:
        return None


def places_needed(amount: str | Decimal | None) -> int:
    """The decimals an amount needs to show exactly: 2 for "52.9620", 0 for "50.00"."""
    value = None if amount is None else _decimal(amount)
    return 0 if value is None else decimal_places(value)


def currency_places(currency: str | None) -> int:
    """The decimals a currency is written with (CLDR: 2 for USD, 0 for JPY)."""
    return get_currency_precision(currency) if currency else 2


def column_places(amounts: Iterable[str | Decimal | None]) -> int:
    """The decimals a column of amounts shows, so that its decimal points line up:
    the most any of them has, at least two."""
    return max([2, *(places_needed(a) for a in amounts)])


def N_(message: str) -> str:  # gettext's name for "mark, translate later"
    return message


def catalog_path(lang: str) -> Path:
    return TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po"


@cache
def _messages(lang: str) -> dict[str, str]:
    path = catalog_path(lang)
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        catalog = read_po(fh, locale=lang)
    return {
        str(m.id): str(m.string)
        for m in catalog
        if m.id and isinstance(m.id, str) and m.string and not m.fuzzy
    }


class Translator:
    """gettext and formatting for one language."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGUAGES else DEFAULT
        self.locale = Locale.parse(_LOCALES[self.lang])
        self._messages = _messages(self.lang)

    def gettext(self, message: str) -> str:
        return self._messages.get(message, message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.gettext(singular if n == 1 else plural)

    def money(
        self, amount: str | Decimal | None, currency: str | None, places: int | None = None
    ) -> str:
        """`12,34 €` in Greek, `€12.34` in English; `places` decimals (a tenant page's
        one number for all its amounts, `places.page_places`), else the currency's,
        never fewer than the amount has. A negative amount takes the minus sign
        (U+2212) the ledger's debits show, not a hyphen."""
        if amount is None:
            return "—"
        value = _decimal(amount)
        if value is None:
            return str(amount)
        shown = max(currency_places(currency) if places is None else places, places_needed(value))
        magnitude = value.copy_abs().quantize(Decimal(1).scaleb(-shown))
        digits = "0." + "0" * shown if shown else "0"
        if not currency:
            text = format_decimal(magnitude, "#,##" + digits, locale=self.locale)
        else:
            base = self.locale.currency_formats["standard"].pattern
            pattern = base.replace("0.00", digits)
            text = format_currency(
                magnitude,
                currency,
                format=pattern,
                locale=self.locale,
                currency_digits=False,
                decimal_quantization=False,
            )
        return "\u2212" + text if value < 0 else text

    def form_amount(self, amount: str | None) -> str:
        """An amount as a form field shows it, for amounts.py to read back: the decimals
        it needs, at least two (the API's `25.0000` as `25.00`), this language's decimal
        sign (`25,00` in Greek), no grouping."""
        value = None if amount is None else _decimal(amount)
        if value is None:
            return amount or ""
        return format_decimal(value, "0.00", locale=self.locale, decimal_quantization=False)

    def number(self, value: int | Decimal) -> str:
        return format_decimal(value, locale=self.locale)

    def when(self, value: str | datetime | None) -> str:
        if value is None:
            return "—"
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        # The APIs' times are UTC, and so is what the page shows: it says so.
        return f"{format_datetime(moment, 'medium', tzinfo=UTC, locale=self.locale)} UTC"

    def day(self, value: str | date) -> str:
        moment = date.fromisoformat(value) if isinstance(value, str) else value
        return format_date(moment, "medium", locale=self.locale)

    def short_day(self, value: str | date) -> str:
        moment = date.fromisoformat(value) if isinstance(value, str) else value
        return format_date(moment, "d MMM", locale=self.locale)

    def month(self, value: date) -> str:
        return format_date(value, "LLLL y", locale=self.locale)


@cache
def translator(lang: str) -> Translator:
    return Translator(lang)


Gettext = Callable[[str], str]
