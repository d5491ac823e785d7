"""Phone numbers that follow the real numbering plans closely enough to exercise the rate card."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Final

# Per country: (code, weight as a call destination, national-number generators).
# Each generator returns the digits after the country code. Ranges follow the
# real numbering plans closely enough that the example rate card's mobile
# prefixes (+447, +4917, +336, +8190, ...) get their share of traffic.


def random_digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


_NANP_AREA_CODES: Final = (
    "212", "213", "206", "303", "305", "312", "404", "415", "512", "617",
    "646", "702", "713", "718", "773", "818", "916", "416", "514", "604",
)  # fmt: skip


def _nanp(rng: random.Random) -> str:
    # Exchange codes start 2-9 and 555 is fictional-only, so avoid it.
    exchange = str(rng.randint(200, 999))
    if exchange == "555":
        exchange = "556"
    return rng.choice(_NANP_AREA_CODES) + exchange + random_digits(rng, 4)


NationalGen = Callable[[random.Random], str]

_COUNTRIES: Final[dict[str, tuple[str, float, tuple[NationalGen, ...]]]] = {
    "US": ("1", 30.0, (_nanp,)),
    "GB": (
        "44",
        14.0,
        (
            lambda r: "20" + random_digits(r, 8),
            lambda r: "161" + random_digits(r, 7),
            lambda r: "131" + random_digits(r, 7),
            lambda r: "7" + r.choice("1234579") + random_digits(r, 8),
            lambda r: "7" + r.choice("1234579") + random_digits(r, 8),
        ),
    ),
    "DE": (
        "49",
        8.0,
        (
            lambda r: "30" + random_digits(r, 8),
            lambda r: "89" + random_digits(r, 8),
            lambda r: "1" + r.choice("567") + r.choice("0123456789") + random_digits(r, 8),
        ),
    ),
    "FR": (
        "33",
        6.0,
        (lambda r: "1" + random_digits(r, 8), lambda r: r.choice("67") + random_digits(r, 8)),
    ),
    "ES": (
        "34",
        4.0,
        (lambda r: "91" + random_digits(r, 7), lambda r: r.choice("67") + random_digits(r, 8)),
    ),
    "IT": (
        "39",
        4.0,
        (lambda r: "02" + random_digits(r, 8), lambda r: "3" + random_digits(r, 9)),
    ),
    "NL": (
        "31",
        4.0,
        (lambda r: "20" + random_digits(r, 7), lambda r: "6" + random_digits(r, 8)),
    ),
    "AU": (
        "61",
        4.0,
        (lambda r: r.choice("23") + random_digits(r, 8), lambda r: "4" + random_digits(r, 8)),
    ),
    "JP": (
        "81",
        4.0,
        (
            lambda r: "3" + random_digits(r, 8),
            lambda r: r.choice(("70", "80", "90")) + random_digits(r, 8),
        ),
    ),
    "IN": (
        "91",
        5.0,
        (
            lambda r: r.choice(("11", "22")) + random_digits(r, 8),
            lambda r: r.choice("6789") + random_digits(r, 9),
        ),
    ),
    "MX": ("52", 3.0, (lambda r: r.choice(("55", "33", "81")) + random_digits(r, 8),)),
    "BR": (
        "55",
        3.0,
        (lambda r: "21" + random_digits(r, 8), lambda r: "119" + random_digits(r, 8)),
    ),
    "SG": ("65", 3.0, (lambda r: r.choice("689") + random_digits(r, 7),)),
    "IE": (
        "353",
        3.0,
        (
            lambda r: "1" + random_digits(r, 7),
            lambda r: "8" + r.choice("35679") + random_digits(r, 7),
        ),
    ),
}

# Conference bridges only dial out where the example card's conferencing_dial_out
# table has a rate; dial-outs elsewhere would all land in credits.rejected as
# no_rate and drown the deliberate garbage.
CONFERENCE_DIAL_OUT_COUNTRIES: Final = ("US", "GB", "IE", "DE", "FR", "AU", "JP")

HOME_COUNTRY_WEIGHTS: Final = {
    "US": 14, "GB": 7, "DE": 3, "FR": 2, "ES": 1, "IT": 1, "NL": 2,
    "AU": 2, "JP": 1, "IN": 1, "MX": 1, "BR": 1, "SG": 1, "IE": 2,
}  # fmt: skip


def random_number(rng: random.Random, country: str) -> str:
    code, _, gens = _COUNTRIES[country]
    return "+" + code + rng.choice(gens)(rng)


def random_destination(
    rng: random.Random, home: str, countries: Sequence[str] | None = None
) -> str:
    """A callee: mostly domestic, the rest spread by international traffic share."""
    pool = list(countries) if countries is not None else list(_COUNTRIES)
    if home in pool and rng.random() < 0.65:
        return random_number(rng, home)
    weights = [_COUNTRIES[c][1] for c in pool]
    return random_number(rng, rng.choices(pool, weights=weights)[0])


def random_toll_free(rng: random.Random, home: str) -> str:
    if home in ("GB", "IE") or (home not in ("US",) and rng.random() < 0.3):
        return "+44800" + random_digits(rng, 6)
    # NANP toll-free: 800/888 then an exchange starting 2-9.
    return "+1" + rng.choice(("800", "888")) + str(rng.randint(2, 9)) + random_digits(rng, 6)
