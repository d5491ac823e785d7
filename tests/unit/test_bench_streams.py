"""The Kafka Streams yardstick's driver hands its application the worker's rate card,
runs it for as long as the latency phase needs and then stops it, says why when it
gives no result, and refuses an order it cannot run."""

from __future__ import annotations

import json
import re
import sys
import textwrap
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


# Stands in for the application (bench/streams_app/src/Meter.java): keeps its
# arguments, prints its result line once the drain is done, and, told to stay, runs
# until its standard input closes.
_STAND_IN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    args = sys.argv[1:]
    beside = Path(args[4]).parent
    (beside / "args.json").write_text(json.dumps(args))
    print(f"RESULT {args[2]} 1000.0 1250.0", flush=True)
    if args[-1] == "stay":
        sys.stdin.read()
    (beside / "stopped").write_text("after stdin closed")
    """
)


async def test_the_application_stays_until_the_driver_is_done_and_then_stops(
    tmp_path: Path,
) -> None:
    stand_in = tmp_path / "app.py"
    stand_in.write_text(_STAND_IN)
    root = tmp_path / "run"
    root.mkdir()

    result = await streams.streams_drain(
        [sys.executable, str(stand_in)], "127.0.0.1:9", "p.", root, 500, 20, phase=None
    )

    assert result["events_per_s"] == 1000.0
    assert result["second_half_events_per_s"] == 1250.0
    assert result["commit_interval_ms"] == 20
    args = json.loads((root / "args.json").read_text())
    assert args[:3] == ["127.0.0.1:9", "p.", "500"]
    assert args[5:] == ["20", "stay"]
    assert (root / "stopped").read_text() == "after stdin closed"


async def test_an_application_that_gives_no_result_is_reported_with_its_log(
    tmp_path: Path,
) -> None:
    stand_in = tmp_path / "app.py"
    stand_in.write_text("import sys; sys.exit('no broker at 127.0.0.1:9')")

    with pytest.raises(RuntimeError, match=re.escape("no broker at 127.0.0.1:9")):
        await streams.streams_drain(
            [sys.executable, str(stand_in)], "127.0.0.1:9", "p.", tmp_path, 500, 100, phase=None
        )
