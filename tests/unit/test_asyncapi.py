"""docs/asyncapi.yaml: current, valid AsyncAPI 3.0, and true to the processor's topics.

Validation uses the official AsyncAPI 3.0.0 JSON Schema (tests/unit/data, vendored
from npm's @asyncapi/specs; see the README there). To refresh it:

    npm pack @asyncapi/specs && tar xzf asyncapi-specs-*.tgz
    python -c "import json,sys; s=json.load(open('package/schemas/3.0.0-without-\\$id.json'));
      open('tests/unit/data/asyncapi-3.0.0.schema.json','w').write(
      json.dumps(s, separators=(',',':'), sort_keys=True)+'\\n')"
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from processor.config import settings as s
from processor.kafka.topics import TopicNames
from schemas import asyncapi

SCHEMA = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"


@cache
def validator() -> Any:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def errors(document: dict[str, Any]) -> list[str]:
    return [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator().iter_errors(document)
    ]


def checked_in() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(asyncapi.DOC_PATH.read_text())
    return loaded


def test_checked_in_document_is_current() -> None:
    problems = asyncapi.check()
    assert not problems, "run `python -m schemas.asyncapi`: " + "; ".join(problems)


def test_document_is_valid_asyncapi_3() -> None:
    document = checked_in()
    assert errors(document) == []
    # The structural minimum of AsyncAPI 3, said explicitly as well.
    assert document["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(document["info"])
    for channel in document["channels"].values():
        assert "address" in channel and channel["messages"]
    for op in document["operations"].values():
        assert op["action"] in ("send", "receive")
        assert op["channel"]["$ref"].startswith("#/channels/")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("asyncapi",), "2.6.0"),
        (("operations", "receiveUsageCalls", "action"), "subscribe"),
        (("info", "version"), None),
        (("servers", "kafka", "protocol"), 9092),
    ],
)
def test_the_validator_catches_broken_documents(path: tuple[str, ...], value: Any) -> None:
    # Guards against a validator that accepts anything (a wrong or empty schema).
    document = copy.deepcopy(checked_in())
    node = document
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    assert errors(document)


def test_every_topic_of_the_processor_is_a_channel() -> None:
    names = TopicNames.from_settings(s.Settings(METER_APP_ID="{appId}"))
    addresses = {channel["address"] for channel in checked_in()["channels"].values()}
    # Faust's table changelogs hold the processor's state, not messages anyone
    # exchanges with it, so they are not channels.
    assert addresses == set(names.inputs + names.outputs)
    contract = {
        s.USAGE_CALLS,
        s.USAGE_CONFERENCING,
        s.COMMANDS,
        s.RECHARGE_REQUESTS,
        s.LEDGER,
        s.ALERTS,
        s.REJECTED,
        s.COMMAND_RESULTS,
        s.NOTIFICATION_SETTINGS,
    }
    assert contract <= addresses and len(addresses - contract) == 2


def test_payloads_reference_the_generated_json_schemas() -> None:
    document = checked_in()
    files = asyncapi.referenced_files(document)
    assert {f.name for f in files} >= {
        "CallUsage.json",
        "ConferenceUsage.json",
        "FundsAdded.json",
        "AutoRechargeConfigured.json",
        "RechargeFailed.json",
        "RechargeRequested.json",
        "LedgerEntry.json",
        "BalanceAlert.json",
        "RejectedRecord.json",
        "AutoRechargeChanged.json",
        "CommandResult.json",
    }
    for f in files:
        assert f.is_file(), f
    commands = document["channels"]["creditsCommands"]["messages"]
    assert set(commands) == {
        "FundsAdded",
        "AutoRechargeConfigured",
        "RechargeFailed",
        "TenantLimitsConfigured",
        "AutoRechargeChanged",
        "NotificationsConfigured",
        "NotificationsChanged",
    }
    # Refs resolve relative to docs/: the file must be where the ref says.
    ref = document["components"]["messages"]["LedgerEntry"]["payload"]["$ref"]
    assert (asyncapi.DOC_PATH.parent / ref).resolve() == (
        asyncapi.DOC_PATH.parent.parent / "schemas" / "json" / "LedgerEntry.json"
    )


def test_reroute_headers_are_the_handlers() -> None:
    from processor.worker import records

    headers = checked_in()["components"]["messages"]["ReroutedRecord"]["headers"]
    assert set(headers["required"]) == {
        records.H_SOURCE,
        records.H_TOPIC,
        records.H_PARTITION,
        records.H_OFFSET,
    }


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "asyncapi.yaml"
    assert asyncapi.main(["--check"], path=path) == 1
    assert "python -m schemas.asyncapi" in capsys.readouterr().err
    assert asyncapi.main([], path=path) == 0
    assert asyncapi.main(["--check"], path=path) == 0
    assert yaml.safe_load(path.read_text()) == asyncapi.build()
