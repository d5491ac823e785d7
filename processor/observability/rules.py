"""Added: deploy/k8s/prometheusrule.yaml, generated from the Prometheus rules file.

    meter rules export          # (re)write deploy/k8s/prometheusrule.yaml
    meter rules export --check  # exit 1 if it differs from what the rules file makes

The alert rules live in one place, `deploy/prometheus/rules/credits-meter.rules.yml`
(checked by promtool, unit-tested with `promtool test rules`, loaded by the compose
Prometheus). The Prometheus Operator takes rules as a `PrometheusRule` resource whose
`spec.groups` is that file's `groups`: this module writes it, and a unit test fails
when the two differ.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from schemas import generated

__all__ = ["MANIFEST", "RULES", "check", "main", "render", "write"]

ROOT: Final = Path(__file__).resolve().parents[2]
RULES: Final = ROOT / "deploy" / "prometheus" / "rules" / "credits-meter.rules.yml"
MANIFEST: Final = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"
_HEADER: Final = (
    "# Generated from deploy/prometheus/rules/credits-meter.rules.yml by\n"
    "# `meter rules export`: edit the rules file, not this one (a unit test compares them).\n"
    "# The Prometheus Operator loads it; alerts select job credits-meter (podmonitor.yaml).\n"
)


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line PromQL stays a readable block, as in the rules file.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(rules: Path = RULES) -> str:
    """The PrometheusRule manifest for the rules file, as YAML text."""
    groups: Any = yaml.safe_load(rules.read_text(encoding="utf-8"))["groups"]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "credits-meter",
            "labels": {"app.kubernetes.io/name": "credits-meter"},
        },
        "spec": {"groups": groups},
    }
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return _HEADER + body


def check(rules: Path = RULES, manifest: Path = MANIFEST) -> list[str]:
    """Problems with the manifest on disk; empty when it is what the rules file makes."""
    if not manifest.is_file():
        return [f"missing: {manifest}"]
    if manifest.read_text(encoding="utf-8") != render(rules):
        return [f"differs from {rules}: {manifest}"]
    return []


def write(rules: Path = RULES, manifest: Path = MANIFEST) -> bool:
    """Rewrite the manifest if it changed; True when it did."""
    return generated.rewrite(manifest, render(rules))


def main(argv: Sequence[str] | None = None) -> int:
    return generated.command(
        argv,
        prog="meter rules export",
        description="Write (or check) deploy/k8s/prometheusrule.yaml from the rules file.",
        check=check,
        write=lambda: [f"wrote {MANIFEST}" if write() else f"{MANIFEST} unchanged"],
        current=lambda: f"{MANIFEST} up to date",
        stale="the PrometheusRule has drifted: run `meter rules export`",
    )


if __name__ == "__main__":
    sys.exit(main())
