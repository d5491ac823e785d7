"""JSON log lines carry the ids of the record they are about."""

from __future__ import annotations

import json
import logging

from processor.observability.logs import JsonFormatter, logging_config


def test_a_line_about_an_event_carries_its_ids() -> None:
    record = logging.LogRecord(
        "processor.worker.intake", logging.INFO, __file__, 1, "rejected %s", ("x",), None
    )
    record.tenant_id = "acme"
    record.event_id = "e-1"
    record.source_offset = 7
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "rejected x"
    assert line["tenant_id"] == "acme" and line["event_id"] == "e-1"
    assert line["source_offset"] == 7
    assert line["level"] == "info" and line["ts"].endswith("Z")


def test_an_exception_is_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exc"]


def test_text_format_keeps_fausts_own_logging() -> None:
    assert logging_config("text", "info") is None
    config = logging_config("json", "info")
    assert config is not None and config["root"]["level"] == "INFO"
