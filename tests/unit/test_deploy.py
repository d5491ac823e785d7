"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests, checked offline.

No container engine or cluster runs here, so each file is checked against its
published schema (Kubernetes' OpenAPI-derived JSON Schemas shipped by
kubernetes-validate; the compose-spec schema, vendored in tests/unit/data) and the
pieces are checked against each other and against the code: ports, paths, probes,
users, the rate card, the Prometheus job the alert rules select.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shutil
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from processor.config.settings import _SECRETS, Compiled, Settings
from processor.core.rate_card_parser import load_rate_card
from processor.ops.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()
DATA = Path(__file__).parent / "data"
WORKER_PORT = 6066


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, doc) for p in sorted(K8S.glob("*.yaml")) for doc in load_all(p)]


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [doc for _, doc in k8s_docs() if doc["kind"] == kind]
    return doc


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def by_name(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


# The pods, by their app.kubernetes.io/name label (= the workload's name).
WORKER = "credits-meter"
SINK = "credits-meter-ledger-sink"
NOTIFIER = "credits-meter-notifier"
CONSOLE = "credits-meter-console"
# Each `meter` command's HTTP port setting (its Service's port is that default).
PORT_SETTING = {
    "worker": "METER_WEB_PORT",
    "ledger-sink": "METER_SINK_PORT",
    "notifier": "METER_NOTIFIER_PORT",
    "console": "METER_CONSOLE_PORT",
}
SETTINGS = {str(f.validation_alias): f for f in Settings.model_fields.values()}
KUSTOMIZATION_TEXT = (K8S / "kustomization.yaml").read_text()


@cache
def workloads() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for _, d in k8s_docs()
        if d["kind"] in ("StatefulSet", "Deployment")
    }


def container_of(workload: dict[str, Any]) -> dict[str, Any]:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def labels_of(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def command_of(workload: dict[str, Any]) -> str:
    return str(container_of(workload)["args"][0])


def settings_of(container: dict[str, Any]) -> dict[str, Any]:
    """What a container's environment holds: its ConfigMaps' (envFrom), then its own
    env, which wins as in Kubernetes; a value, or the valueFrom mapping."""
    merged: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        merged.update(by_name("ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        merged[entry["name"]] = entry["value"] if "value" in entry else entry["valueFrom"]
    return merged


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def selected(selector: dict[str, Any]) -> set[str]:
    return {name for name, w in workloads().items() if selects(selector, labels_of(w))}


def port_default(command: str) -> int:
    default = SETTINGS[PORT_SETTING[command]].default
    assert isinstance(default, int)
    return default


# ------------------------------------------------------------------------ Kubernetes

# Custom resources (the Prometheus Operator's) have no built-in schema to check against.
CUSTOM = ("Kustomization", "PodMonitor", "PrometheusRule")
BUILTIN = [(p, d) for p, d in k8s_docs() if d["kind"] not in CUSTOM]


@pytest.mark.parametrize(
    ("path", "doc"), BUILTIN, ids=[f"{p.name}:{d['kind']}" for p, d in BUILTIN]
)
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path, doc: dict[str, Any]) -> None:
    # strict: unknown fields are errors too (a misspelt probe would be silently ignored).
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    doc = copy.deepcopy(by_kind("StatefulSet"))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = by_kind("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_statefulset_runs_workers_the_way_the_code_expects() -> None:
    sts = by_kind("StatefulSet")
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = pod["spec"]["containers"]
    env = env_of(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": WORKER_PORT}
    assert env["METER_WEB_PORT"]["value"] == str(WORKER_PORT)

    # Probes: liveness on /health, readiness on /ready, on the named HTTP port.
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}

    # The `meter worker` entrypoint, advertising the pod's stable DNS name; every
    # $(VAR) it uses is defined before it.
    args = container["args"]
    assert args[:2] == ["worker", "--advertise-host"]
    assert sts["spec"]["serviceName"] in args[2]
    for var in re.findall(r"\$\((\w+)\)", args[2]):
        assert var in env, var

    # METER_DATA_DIR is the mount of the per-pod volume.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == env["METER_DATA_DIR"]["value"]

    # The rate card: the ConfigMap mounted where METER_RATE_CARD points.
    configmap = by_name("ConfigMap", "credits-meter-rate-card")
    [card_volume] = [
        v
        for v in pod["spec"]["volumes"]
        if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    ]
    assert card_volume["configMap"]["name"] == configmap["metadata"]["name"]
    card_path = Path(env["METER_RATE_CARD"]["value"])
    assert str(card_path.parent) == mounts[card_volume["name"]]
    assert card_path.name in configmap["data"]

    # The admin token only ever comes from a Secret.
    assert "secretKeyRef" in env["METER_ADMIN_TOKEN"]["valueFrom"]
    assert "value" not in env["METER_ADMIN_TOKEN"]

    # The image's user (deploy/Dockerfile), non-root.
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == dockerfile_user()


def test_services_select_the_workers() -> None:
    sts = by_kind("StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    services = {
        d["metadata"]["name"]: d
        for _, d in k8s_docs()
        if d["kind"] == "Service" and d["metadata"]["name"] in {WORKER, sts["spec"]["serviceName"]}
    }
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    # Workers forward reads to each other before they are ready.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}


def test_the_rate_card_configmap_is_a_valid_card(tmp_path: Path) -> None:
    configmap = by_name("ConfigMap", "credits-meter-rate-card")
    [(name, text)] = configmap["data"].items()
    path = tmp_path / name
    path.write_text(text)
    card = load_rate_card(path)
    assert card.currency == "USD"


def test_the_pods_carry_no_service_account_token() -> None:
    for workload in workloads().values():
        assert workload["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def rule_ports(rule: dict[str, Any]) -> set[tuple[str, int | str]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}


def policy_for(workload: str) -> dict[str, Any]:
    [policy] = [
        d
        for _, d in k8s_docs()
        if d["kind"] == "NetworkPolicy" and workload in selected(d["spec"]["podSelector"])
    ]
    return policy


def test_every_pod_is_closed_by_exactly_one_network_policy() -> None:
    policies = [d for _, d in k8s_docs() if d["kind"] == "NetworkPolicy"]
    for policy in policies:
        # Selects pods that exist (a typo in a label would select none, silently).
        assert selected(policy["spec"]["podSelector"]), policy["metadata"]["name"]
        # Both directions listed: whatever no rule allows is denied.
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for name in workloads():
        policy_for(name)


def test_network_policies_let_in_only_each_pods_service_port() -> None:
    for name, workload in workloads().items():
        named = {p["name"] for p in container_of(workload)["ports"]}
        service_ports = {
            (p.get("protocol", "TCP"), p["targetPort"])
            for _, d in k8s_docs()
            if d["kind"] == "Service" and name in selected({"matchLabels": d["spec"]["selector"]})
            for p in d["spec"]["ports"]
        }
        assert service_ports, f"{name}: no Service"
        # Every rule names ports (a rule without ports opens them all), only the
        # Services' ports, which are the container's named ports.
        for rule in policy_for(name)["spec"]["ingress"]:
            assert rule_ports(rule) <= service_ports, (name, rule)
            assert all(port in named for _, port in rule_ports(rule)), (name, rule)


# Which pods each may open connections to, and on which of their ports: the workers
# forward account reads to each other and command status reads to the sink
# (METER_SINK_URL); the console calls the workers (METER_API_URL) and the sink; the
# sink and the notifier call no pod of ours.
PEERS: dict[str, set[tuple[str, str]]] = {
    WORKER: {(WORKER, "http"), (SINK, "http")},
    SINK: set(),
    NOTIFIER: set(),
    CONSOLE: {(WORKER, "http"), (SINK, "http")},
}
# The Kafka clients (the console only calls HTTP APIs).
KAFKA_CLIENTS = {"worker", "ledger-sink", "notifier"}
POSTGRES_PORT = 5432
# Where a webhook must not reach: the cluster, the host, cloud metadata, private nets.
NOT_PUBLIC = {
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
}


def test_pods_reach_each_other_only_where_the_code_calls() -> None:
    assert set(PEERS) == set(workloads())
    for name in workloads():
        reached: set[tuple[str, str | int]] = set()
        for rule in policy_for(name)["spec"]["egress"]:
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    continue
                # A pod selector alone: this namespace's pods, no other namespace's.
                assert set(peer) == {"podSelector"}, (name, peer)
                targets = selected(peer["podSelector"])
                assert targets, f"{name}: {peer} selects no pod"
                reached |= {(t, port) for t in targets for _, port in rule_ports(rule)}
        assert reached == PEERS[name], name
        # ... and each of those lets it in on that port, which it has.
        for target, port in reached:
            assert port in {p["name"] for p in container_of(workloads()[target])["ports"]}
            assert any(
                port in {p for _, p in rule_ports(rule)}
                and all(name in selected(source["podSelector"]) for source in rule.get("from", []))
                for rule in policy_for(target)["spec"]["ingress"]
            ), (name, target, port)


def test_egress_beyond_our_pods_is_kafka_dns_the_database_smtp_and_public_webhooks() -> None:
    for name, workload in workloads().items():
        settings = settings_of(container_of(workload))
        expected = {("UDP", 53), ("TCP", 53)}
        if command_of(workload) in KAFKA_CLIENTS:
            bootstrap = settings["KAFKA_BOOTSTRAP_SERVERS"]
            expected |= {("TCP", int(s.rsplit(":", 1)[1])) for s in bootstrap.split(",")}
        if "METER_DATABASE_URL" in settings:
            expected.add(("TCP", POSTGRES_PORT))
        if settings.get("METER_SMTP_HOST"):
            smtp_port = settings.get("METER_SMTP_PORT", SETTINGS["METER_SMTP_PORT"].default)
            expected.add(("TCP", int(smtp_port)))
        anywhere: set[tuple[str, str | int]] = set()
        to_addresses = []
        for rule in policy_for(name)["spec"]["egress"]:
            assert rule_ports(rule), f"{name}: an egress rule without ports opens every port"
            if "to" not in rule:
                anywhere |= rule_ports(rule)
            elif any("ipBlock" in peer for peer in rule["to"]):
                to_addresses.append(rule)
        assert anywhere == expected, name

        # Webhooks: the notifier only, to https and http ports of public addresses.
        if name != NOTIFIER:
            assert to_addresses == [], name
            continue
        [webhooks] = to_addresses
        assert rule_ports(webhooks) == {("TCP", 443), ("TCP", 80)}
        families = set()
        for peer in webhooks["to"]:
            block = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            assert block.prefixlen == 0
            families.add(block.version)
            excepted = {ipaddress.ip_network(n) for n in peer["ipBlock"]["except"]}
            # Same family as the block (the stubs type subnet_of per family, hence the
            # ignore below; mixed families would raise TypeError).
            assert all(n.version == block.version for n in excepted)
            assert all(n.subnet_of(block) for n in excepted)  # type: ignore[arg-type]
            assert {n for n in NOT_PUBLIC if n.version == block.version} <= excepted
        assert families == {4, 6}


def test_podmonitors_scrape_every_metrics_port_as_the_prometheus_config_names_it() -> None:
    """PodMonitor is a CRD, not in the built-in schemas: check its shape by hand."""
    scraped: dict[str, str] = {}
    for _, monitor in k8s_docs():
        if monitor["kind"] != "PodMonitor":
            continue
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(monitor["spec"]) <= {"jobLabel", "selector", "podMetricsEndpoints"}
        targets = selected(monitor["spec"]["selector"])
        assert targets, monitor["metadata"]["name"]
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"[0-9]+(ms|s|m)", endpoint["interval"])
        for target in targets:
            workload = workloads()[target]
            assert endpoint["port"] in {p["name"] for p in container_of(workload)["ports"]}
            assert target not in scraped, f"{target} scraped twice"
            scraped[target] = labels_of(workload)[monitor["spec"]["jobLabel"]]
    # Everything that serves /metrics; the console serves none.
    assert set(scraped) == {WORKER, SINK, NOTIFIER}
    assert '"/metrics"' not in (ROOT / "processor" / "console" / "pages.py").read_text()
    # The same jobs as the plain Prometheus config; the workers' is the rules' job.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert set(scraped.values()) == {c["job_name"] for c in config["scrape_configs"]}
    rules = (DEPLOY / "prometheus" / "rules" / "credits-meter.rules.yml").read_text()
    # Each job's down alerts (CreditsMeterWorkerDown, ...NotifierDown, ...LedgerSinkDown).
    for job in scraped.values():
        assert f'up{{job="{job}"}} == 0' in rules, job


@pytest.mark.parametrize("name", sorted(workloads()))
def test_every_workload_is_probed_limited_and_unprivileged(name: str) -> None:
    workload = workloads()[name]
    pod = workload["spec"]["template"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels_of(workload).items()
    # The name label is the workload's: other objects select pods by it.
    assert labels_of(workload)["app.kubernetes.io/name"] == name
    container = container_of(workload)
    # One image runs every command.
    assert container["image"] == container_of(workloads()[WORKER])["image"]
    # Arguments `meter` takes.
    assert build_parser().parse_args(container["args"]).command == command_of(workload)

    # Probes: liveness (and startup) on /health, readiness on /ready, on the named port.
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}

    # The port the command listens on: its setting's default, or what the env says.
    settings = settings_of(container)
    setting = PORT_SETTING[command_of(workload)]
    port = int(settings.get(setting, port_default(command_of(workload))))
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}

    # Resources: requests to schedule by, a memory limit.
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]

    # Non-root as the image's user, no privilege, nothing written outside its volumes.
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == dockerfile_user()
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"] for v in pod["spec"].get("volumes", [])} | {
        c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(mounts) <= volumes
    assert "/tmp" in mounts.values()


def fake_secret(variable: str) -> str:
    """A value of the right shape for a setting a Secret holds."""
    return {
        "METER_SECRETS_KEY": "a" * 43 + "=",
        "METER_DATABASE_URL": "postgresql://meter:secret@postgres:5432/credits_meter",
    }.get(variable, "secret")


@pytest.mark.parametrize("name", sorted(workloads()))
def test_every_variable_a_manifest_sets_is_a_setting_it_allows(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = container_of(workloads()[name])
    args = " ".join(container["args"])
    for variable in SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in settings_of(container).items():
        if isinstance(value, dict) and "fieldRef" in value:
            # The pod's own facts, for $(VAR) in the arguments only.
            assert f"$({variable})" in args, (name, variable)
            continue
        assert variable in SETTINGS, f"{name}: {variable} is not a setting"
        if isinstance(value, dict):
            assert set(value) == {"secretKeyRef"}, (name, variable)
            value = fake_secret(variable)
        monkeypatch.setenv(variable, value)
    # The values are ones the settings take (a port, a literal, a URL scheme, ...).
    Settings()


def test_secrets_only_come_from_secrets_that_are_documented() -> None:
    assert "Secret" not in {d["kind"] for _, d in k8s_docs()}, "a Secret in the repository"
    for _, doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            assert not set(doc["data"]) & _SECRETS, doc["metadata"]["name"]
    for name, workload in workloads().items():
        settings = settings_of(container_of(workload))
        for variable, value in settings.items():
            if variable in _SECRETS:
                assert isinstance(value, dict) and "secretKeyRef" in value, (name, variable)
            if isinstance(value, dict) and "secretKeyRef" in value:
                ref = value["secretKeyRef"]
                # kustomization.yaml says how to make it (and never holds it).
                assert f"kubectl create secret generic {ref['name']}" in KUSTOMIZATION_TEXT
                assert f"--from-literal={ref['key']}=" in KUSTOMIZATION_TEXT
    # The workers seal webhook secrets with the key the notifier opens them with.
    keys = {
        name: settings_of(container_of(w))["METER_SECRETS_KEY"]["secretKeyRef"]
        for name, w in workloads().items()
        if "METER_SECRETS_KEY" in settings_of(container_of(w))
    }
    assert set(keys) == {WORKER, NOTIFIER}
    assert keys[WORKER] == keys[NOTIFIER]


def test_token_checking_pods_mount_the_key_set_the_settings_name() -> None:
    configmaps = {d["metadata"]["name"] for _, d in k8s_docs() if d["kind"] == "ConfigMap"}
    checkers = {n: w for n, w in workloads().items() if command_of(w) in ("worker", "ledger-sink")}
    assert set(checkers) == {WORKER, SINK}
    for workload in checkers.values():
        container = container_of(workload)
        settings = settings_of(container)
        assert settings["METER_AUTH"] == "jwt"
        assert settings["METER_AUTH_ISSUER"] and settings["METER_AUTH_AUDIENCE"]
        jwks = Path(settings["METER_AUTH_JWKS"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume_name = mounts[str(jwks.parent)]
        [volume] = [
            v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == volume_name
        ]
        # A ConfigMap the deployer makes from the identity provider's key set.
        configmap = volume["configMap"]["name"]
        assert configmap not in configmaps
        assert (
            f"kubectl create configmap {configmap} --from-file={jwks.name}=" in KUSTOMIZATION_TEXT
        )


@pytest.mark.parametrize(
    "path",
    [*sorted(K8S.glob("*.yaml")), DEPLOY / "compose.yaml", DEPLOY / "Dockerfile"],
    ids=lambda p: p.name,
)
def test_the_documents_the_comments_point_to_exist(path: Path) -> None:
    """A comment's `docs/x.md` (and its `"Section"`, when named) is in the repository."""
    # Comment lines joined, so a reference broken over two lines reads as one.
    text = re.sub(r"\n\s*#\s*", " ", path.read_text())
    for match in re.finditer(r"(?<![\w/.:-])([\w./-]+\.md)\b(?:'s,? \"([^\"]+)\")?", text):
        document, section = match.groups()
        assert (ROOT / document).is_file(), f"{path.name}: {document}"
        if section:
            headings = re.findall(r"^#+ (.+)$", (ROOT / document).read_text(), re.MULTILINE)
            assert any(section in h for h in headings), f"{path.name}: {document} {section}"


def test_the_checklist_names_every_placeholder_to_replace() -> None:
    """kustomization.yaml's checklist names each example.com value the manifests ship
    (the issuer, the SMTP server, the console's address in emails): one left in place
    refuses every token or sends links nowhere."""
    named = set(re.findall(r"\b(METER_[A-Z_]+|KAFKA_[A-Z_]+)(\*?)", KUSTOMIZATION_TEXT))
    exact = {name for name, star in named if not star}
    prefixes = tuple(name for name, star in named if star)
    placeholders = {
        variable
        for workload in workloads().values()
        for variable, value in settings_of(container_of(workload)).items()
        if isinstance(value, str) and "example." in value
    }
    assert {"METER_AUTH_ISSUER", "METER_CONSOLE_URL", "METER_SMTP_HOST"} <= placeholders
    for variable in placeholders:
        assert variable in exact or variable.startswith(prefixes), variable


def test_token_checking_pods_take_the_same_static_admin_token() -> None:
    """configmap-settings.yaml promises METER_ADMIN_TOKEN works beside the JWTs on the
    workers and the sink: a sink without it refuses the admin's token (the console
    signed in with it, GET /commands/{id} a worker forwards with the caller's header)."""
    checkers = {n: w for n, w in workloads().items() if command_of(w) in ("worker", "ledger-sink")}
    assert set(checkers) == {WORKER, SINK}
    for name, workload in checkers.items():
        token = settings_of(container_of(workload)).get("METER_ADMIN_TOKEN")
        assert token == {"secretKeyRef": {"name": "credits-meter-admin", "key": "token"}}, name


def test_services_ports_are_the_settings_defaults() -> None:
    for _, service in k8s_docs():
        if service["kind"] != "Service":
            continue
        [target] = selected({"matchLabels": service["spec"]["selector"]})
        workload = workloads()[target]
        ports = {p["name"]: p["containerPort"] for p in container_of(workload)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["port"] == ports[port["targetPort"]] == port_default(command_of(workload))


def test_the_urls_the_pods_call_name_the_services() -> None:
    services = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "Service"}

    def service_target(url: str) -> str:
        parts = urlsplit(url)
        service = services[str(parts.hostname)]
        assert parts.port in {p["port"] for p in service["spec"]["ports"]}, url
        # A client Service (any ready pod answers), not the headless one.
        assert service["spec"].get("clusterIP") != "None", url
        [target] = selected({"matchLabels": service["spec"]["selector"]})
        return target

    worker = settings_of(container_of(workloads()[WORKER]))
    console = settings_of(container_of(workloads()[CONSOLE]))
    assert service_target(worker["METER_SINK_URL"]) == SINK
    assert service_target(console["METER_SINK_URL"]) == SINK
    assert service_target(console["METER_API_URL"]) == WORKER


# --------------------------------------------------------------------------- compose


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads((DATA / "compose-spec.schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    assert compose_errors(compose()) == []
    broken = copy.deepcopy(compose())
    broken["services"]["worker-1"]["healthcheck"] = {"interval": 10}
    assert compose_errors(broken), "the schema must catch a wrong type"


def test_compose_runs_kraft_kafka_two_workers_prometheus_and_grafana() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in kafka
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    assert len(workers) == 2
    host_ports = []
    for name, worker in workers.items():
        assert worker["command"] == ["worker", "--advertise-host", worker["hostname"]]
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        env = worker["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert "METER_ADMIN_TOKEN" in env
        assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
        [port] = worker["ports"]
        _, host, container = port.split(":")
        assert container == str(WORKER_PORT)
        host_ports.append(host)
        mounts = dict(v.split(":", 2)[1::-1] for v in worker["volumes"])
        assert env["METER_RATE_CARD"] in mounts, name
    assert len(set(host_ports)) == 2
    # Prometheus scrapes both workers under the job the rules select.
    prometheus = services["prometheus"]
    config_arg = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_file = DEPLOY / "prometheus" / Path(config_arg.split("=", 1)[1]).name
    scrape = yaml.safe_load(config_file.read_text())["scrape_configs"][0]
    assert scrape["job_name"] == "credits-meter"
    assert set(scrape["static_configs"][0]["targets"]) == {
        f"{w['hostname']}:{WORKER_PORT}" for w in workers.values()
    }
    grafana = services["grafana"]
    assert any("/etc/grafana/provisioning/dashboards" in v for v in grafana["volumes"])


# The compose services that run the credits-meter image, by their command.
COMPOSE_COMMANDS = {"ledger-sink": "ledger-sink", "notifier": "notifier", "console": "console"}


def test_compose_runs_the_ledger_sink_the_notifier_and_the_console() -> None:
    services = compose()["services"]
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    for name, command in COMPOSE_COMMANDS.items():
        service = services[name]
        assert service["command"] == [command]
        assert service["image"] == workers["worker-1"]["image"]
        assert service["build"] == workers["worker-1"]["build"]
        # Its port: the setting's default, published on loopback (checked above).
        port = port_default(command)
        assert service["environment"][PORT_SETTING[command]] == str(port)
        [published] = service["ports"]
        assert published.rsplit(":", 1)[1] == str(port)
        # The image's health check asks the worker port: each has its own.
        assert f"127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])
    # SQLite (no METER_DATABASE_URL): one sink and one notifier, on a named volume
    # at the image's METER_DATA_DIR.
    data_dir = dockerfile().envs["METER_DATA_DIR"]
    named = set(compose()["volumes"])
    for name in ("ledger-sink", "notifier"):
        assert "METER_DATABASE_URL" not in services[name]["environment"]
        mounts = dict(v.split(":", 2)[1::-1] for v in services[name]["volumes"])
        assert mounts[data_dir] in named, name

    # The URLs name the compose services on their ports.
    sink_url = f"http://ledger-sink:{port_default('ledger-sink')}"
    for worker in workers.values():
        assert worker["environment"]["METER_SINK_URL"] == sink_url
    console = services["console"]["environment"]
    assert console["METER_SINK_URL"] == sink_url
    api = urlsplit(console["METER_API_URL"])
    assert api.hostname in {w["hostname"] for w in workers.values()}
    assert api.port == WORKER_PORT
    # The console needs no admin token of its own (the workers' whoami knows theirs).
    assert "METER_ADMIN_TOKEN" not in console

    # The workers seal with the notifier's key: taken from the shell by both, never
    # a value in this file (and never empty, which a worker refuses).
    for name in [*workers, "notifier"]:
        environment = services[name]["environment"]
        assert "METER_SECRETS_KEY" in environment
        assert environment["METER_SECRETS_KEY"] is None, name

    # Prometheus scrapes the sink and the notifier, each as its own job.
    prometheus = services["prometheus"]
    config_arg = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_file = DEPLOY / "prometheus" / Path(config_arg.split("=", 1)[1]).name
    jobs = {
        c["job_name"]: set(c["static_configs"][0]["targets"])
        for c in yaml.safe_load(config_file.read_text())["scrape_configs"]
    }
    assert jobs["credits-meter-ledger-sink"] == {f"ledger-sink:{port_default('ledger-sink')}"}
    assert jobs["credits-meter-notifier"] == {f"notifier:{port_default('notifier')}"}


def test_compose_sets_only_settings_on_the_images_services() -> None:
    for name, service in compose()["services"].items():
        if service.get("image") != "credits-meter:local":
            continue
        unknown = set(service["environment"]) - set(SETTINGS)
        assert unknown == set(), name


def test_compose_publishes_nothing_beyond_localhost() -> None:
    """Kafka's listeners are PLAINTEXT and the read API has no auth: loopback only."""
    published = {
        name: service["ports"]
        for name, service in compose()["services"].items()
        if "ports" in service
    }
    assert "kafka" in published
    for name, ports in published.items():
        for port in ports:
            # host_ip:host_port:container_port; "29092:29092" would bind every interface.
            host_ip, _, _ = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name}: {port}"


def test_compose_takes_grafanas_admin_password_from_the_environment() -> None:
    env = compose()["services"]["grafana"]["environment"]
    # ${VAR:?message}: compose refuses to start without it; no well-known default.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_compose_prometheus_config_passes_promtool() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.compose.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------ Dockerfile


@cache
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(str(DEPLOY / "Dockerfile"), cache_content=True)
    parser.content = (DEPLOY / "Dockerfile").read_text()
    return parser


def final_stage() -> list[dict[str, Any]]:
    instructions: list[dict[str, Any]] = dockerfile().structure
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    return instructions[last_from:]


def dockerfile_user() -> str:
    [user] = [i["value"] for i in final_stage() if i["instruction"] == "USER"]
    return str(user.split(":")[0])


def test_dockerfile_builds_on_python_3_11_slim_as_non_root() -> None:
    froms = [i["value"].split()[0] for i in dockerfile().structure if i["instruction"] == "FROM"]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    uid = dockerfile_user()
    assert uid.isdigit() and uid != "0"
    assert re.search(rf"useradd .*--uid {uid}\b", dockerfile().content)


def test_dockerfile_entrypoint_is_meter_worker_with_a_health_check() -> None:
    final = {i["instruction"]: i["value"] for i in final_stage()}
    # Exec form (JSON): signals reach `meter` directly, so the worker shuts down cleanly.
    assert json.loads(final["ENTRYPOINT"]) == ["meter"]
    assert json.loads(final["CMD"]) == ["worker"]
    assert final["EXPOSE"] == str(WORKER_PORT)
    assert "/health" in final["HEALTHCHECK"]
    assert "METER_WEB_PORT" in final["HEALTHCHECK"]
    env = dockerfile().envs
    assert env["METER_DATA_DIR"] in final["VOLUME"]
    assert env["METER_WEB_PORT"] == str(WORKER_PORT)
    project = (ROOT / "pyproject.toml").read_text()
    assert 'meter = "processor.ops.cli:main"' in project


def _build_stage_run() -> str:
    """The build stage's RUN that installs the project, its continuation lines joined."""
    [run] = [
        i["value"]
        for i in dockerfile().structure
        if i["instruction"] == "RUN" and "processor.ops.compiled" in i["value"]
    ]
    return " ".join(str(run).split())


def test_the_image_runs_the_compiled_worker_at_the_locked_versions() -> None:
    run = _build_stage_run()
    # The project and the compiler from requirements.lock's files alone, each checked
    # against its hash.
    locked = re.search(
        r"pip download --no-cache-dir --require-hashes --only-binary :all: --no-deps "
        r"-r requirements\.lock -d (\S+)",
        run,
    )
    assert locked is not None
    assert re.search(
        rf"pip install --no-cache-dir --no-index --find-links {locked[1]} --upgrade \. .*\bmypy\b",
        run,
    )
    # The installed packages built beside them, with the checkout's mypy settings; a
    # failed compile fails the image build.
    assert re.search(
        r"PYTHONSAFEPATH=1 (\S+)/bin/python -m processor\.ops\.compiled "
        r"--config /src/pyproject\.toml --require",
        run,
    )
    venv = run.split("python -m venv ")[1].split()[0]
    copies = [i["value"] for i in final_stage() if i["instruction"] == "COPY"]
    assert f"--from=build {venv} {venv}" in copies
    env = dockerfile().envs  # the final stage's
    assert env["PATH"].startswith(f"{venv}/bin:")
    # A worker that is not running the build refuses to start, rather than run slower.
    assert env["METER_COMPILED"] == "require"
    assert "require" in get_args(Compiled)


def _runtime_requirements(name: str) -> set[str]:
    """Every distribution `name` needs at run time (no extras), by canonical name."""
    wanted, seen = [name], set[str]()
    while wanted:
        dist = canonicalize_name(wanted.pop())
        if dist in seen:
            continue
        seen.add(dist)
        for line in metadata.requires(dist) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                wanted.append(req.name)
    return seen


def test_the_image_drops_only_the_compilers_packages() -> None:
    run = _build_stage_run()
    dropped = {canonicalize_name(n) for n in run.split("pip uninstall -y ")[1].split()}
    assert "mypy" in dropped
    assert not dropped & _runtime_requirements("credits-meter")


def test_dockerfile_copies_only_what_exists_and_the_dockerignore_lets_in() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for ins in dockerfile().structure:
        if ins["instruction"] != "COPY" or "--from=" in ins["value"]:
            continue
        *sources, _ = ins["value"].split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by the dockerignore"
