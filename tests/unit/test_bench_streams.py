"""The Kafka Streams yardstick's driver hands its application the worker's rate card,
and refuses an order it cannot run."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from bench import streams
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card


def test_the_application_gets_every_rate_of_the_workers_card(tmp_path: Path) -> None:
    card = load_rate_card(example_rate_card_path())
    path = tmp_path / "card.tsv"

    streams.export_rate_card(path)

    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert len(rows) == len(card.rates)
    by_key = {(r[0], r[1]): r for r in rows}
    for rate in card.rates:
        _, _, per_minute, increment, minimum, fee = by_key[(rate.table.value, rate.prefix)]
        # Money as exact decimals, as the application's BigDecimal reads it.
        assert Decimal(per_minute) == rate.per_minute and Decimal(fee) == rate.connect_fee
        assert (int(increment), int(minimum)) == (rate.increment_seconds, rate.minimum_seconds)


@pytest.mark.parametrize("order", ["streams,worker", "ceiling,kafka,ceiling"])
def test_an_order_without_a_ceiling_or_with_an_unknown_step_is_refused(order: str) -> None:
    with pytest.raises(SystemExit) as exited:
        streams.main(["--order", order])
    assert exited.value.code == 2
