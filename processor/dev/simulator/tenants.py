"""The simulated tenants: where they are, how much they call, their auto-recharge."""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from processor.dev.simulator.contract import CENT, cents
from processor.dev.simulator.phones import HOME_COUNTRY_WEIGHTS, random_number, random_toll_free


@dataclass(frozen=True, slots=True)
class AutoRecharge:
    enabled: bool
    recharge_amount: Decimal
    trigger_balance: Decimal


@dataclass(frozen=True, slots=True)
class TenantProfile:
    tenant_id: str
    home: str  # ISO 3166 alpha-2 of the tenant's main office; shapes its traffic
    weight: float  # relative share of usage traffic (Zipf-like across tenants)
    dids: tuple[str, ...]  # the tenant's own numbers: caller ids on outbound calls
    toll_free: tuple[str, ...]  # the tenant's toll-free numbers (support lines, bridges)
    initial_funds: Decimal
    auto_recharge: AutoRecharge | None  # None: the admin never configured it


_TENANT_NAMES: Final = (
    "acme-corp", "globex", "initech.eu", "umbrella-labs", "hooli", "stark-industries",
    "wayne-enterprises", "wonka.co.uk", "cyberdyne", "soylent", "tyrell-corp", "oscorp",
    "massive-dynamic", "vandelay-industries", "dunder-mifflin", "pied-piper",
    "aperture-science", "black-mesa", "blue-sun", "monarch-solutions", "nakatomi.jp",
    "sterling-cooper", "prestige-worldwide", "bluth-company", "gringotts_bank",
    "cogswell:cogs", "spacely-sprockets", "rekall", "weyland-yutani", "virtucon",
    "wernham-hogg.uk", "kramerica", "oceanic-airlines", "ollivanders", "duff-beer",
    "abstergo", "genco-olive-oil", "yoyodyne", "zorg.industries", "tessier-ashpool",
    "bubba-gump", "mom-corp", "planet-express", "octan", "ingen", "los-pollos.mx",
    "roxxon", "good-burger", "dharma_initiative", "krusty-krab",
)  # fmt: skip


def generate_tenants(n: int, rng: random.Random) -> list[TenantProfile]:
    """``n`` tenants with realistic ids and settings; deterministic for a seeded ``rng``."""
    if n < 1:
        raise ValueError("need at least one tenant")
    names = list(_TENANT_NAMES)
    rng.shuffle(names)
    ids = [
        names[i % len(names)] + ("" if i < len(names) else f"-{i // len(names) + 1}")
        for i in range(n)
    ]
    # Zipf-like activity: a few tenants make most calls, like real customer bases.
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)
    homes = list(HOME_COUNTRY_WEIGHTS)
    home_weights = list(HOME_COUNTRY_WEIGHTS.values())
    tenants: list[TenantProfile] = []
    for tenant_id, rank in zip(ids, ranks, strict=True):
        home = rng.choices(homes, weights=home_weights)[0]
        dids = tuple(random_number(rng, home) for _ in range(rng.randint(1, 6)))
        toll_free = tuple(random_toll_free(rng, home) for _ in range(rng.randint(1, 2)))
        # Mostly round top-ups, as people type them; a few odd amounts.
        if rng.random() < 0.8:
            funds = Decimal(rng.choice((5, 10, 20, 25, 50, 75, 100, 150, 200))).quantize(CENT)
        else:
            funds = cents(rng.randint(500, 20000))
        roll = rng.random()
        auto: AutoRecharge | None
        if roll < 0.7:
            auto = AutoRecharge(
                enabled=True,
                recharge_amount=Decimal(rng.randrange(20, 101, 5)).quantize(CENT),
                trigger_balance=Decimal(rng.choice((5, 10, 15, 20, 25))).quantize(CENT),
            )
        elif roll < 0.85:
            auto = AutoRecharge(
                enabled=False,
                recharge_amount=Decimal(rng.randrange(20, 101, 10)).quantize(CENT),
                trigger_balance=Decimal(rng.choice((5, 10))).quantize(CENT),
            )
        else:
            auto = None
        tenants.append(
            TenantProfile(
                tenant_id=tenant_id,
                home=home,
                weight=1.0 / rank**1.1,
                dids=dids,
                toll_free=toll_free,
                initial_funds=funds,
                auto_recharge=auto,
            )
        )
    return tenants
