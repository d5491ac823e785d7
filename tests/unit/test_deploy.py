"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests, checked offline.

No container engine or cluster runs here, so each file is checked against its
published schema (Kubernetes' OpenAPI-derived JSON Schemas shipped by
kubernetes-validate; the compose-spec schema, vendored in tests/unit/data) and the
pieces are checked against each other and against the code: ports, paths, probes,
users, the rate card, the Prometheus job the alert rules select.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from processor.core.rating import load_rate_card

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()
DATA = Path(__file__).parent / "data"
WORKER_PORT = 6066


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, doc) for p in sorted(K8S.glob("*.yaml")) for doc in load_all(p)]


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [doc for _, doc in k8s_docs() if doc["kind"] == kind]
    return doc


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


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
    configmap = by_kind("ConfigMap")
    [card_volume] = [v for v in pod["spec"]["volumes"] if "configMap" in v]
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
    services = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "Service"}
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    # Workers forward reads to each other before they are ready.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}


def test_the_rate_card_configmap_is_a_valid_card(tmp_path: Path) -> None:
    configmap = by_kind("ConfigMap")
    [(name, text)] = configmap["data"].items()
    path = tmp_path / name
    path.write_text(text)
    card = load_rate_card(path)
    assert card.currency == "USD"


def test_the_pods_carry_no_service_account_token() -> None:
    pod = by_kind("StatefulSet")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


def rule_ports(rule: dict[str, Any]) -> set[tuple[str, int | str]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}


def test_the_network_policy_lets_in_only_the_service_port_and_out_only_kafka_and_dns() -> None:
    policy = by_kind("NetworkPolicy")
    sts = by_kind("StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    # Both directions listed: whatever no rule allows is denied.
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    [container] = sts["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    service_ports = {
        (p.get("protocol", "TCP"), p["targetPort"])
        for _, d in k8s_docs()
        if d["kind"] == "Service"
        for p in d["spec"]["ports"]
    }

    # In: every rule names ports (a rule without ports opens them all), only the
    # Services' ports, which are the container's named ports.
    for rule in spec["ingress"]:
        assert rule_ports(rule) <= service_ports, rule
        assert all(port in named for _, port in rule_ports(rule))

    # Out: Kafka's port (from the bootstrap servers the workers are given), DNS, and
    # the other workers' HTTP port (forwarded reads), nothing else.
    bootstrap = env_of(container)["KAFKA_BOOTSTRAP_SERVERS"]["value"]
    kafka_ports = {int(server.rsplit(":", 1)[1]) for server in bootstrap.split(",")}
    allowed_anywhere = {("TCP", port) for port in kafka_ports} | {("UDP", 53), ("TCP", 53)}
    to_workers = set()
    for rule in spec["egress"]:
        ports = rule_ports(rule)
        assert ports, f"an egress rule without ports opens every port: {rule}"
        if "to" in rule:
            [peer] = rule["to"]
            assert peer == {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "credits-meter"}}
            }
            assert peer["podSelector"]["matchLabels"].items() <= labels.items()
            to_workers |= ports
        else:
            assert ports <= allowed_anywhere, rule
    assert to_workers == {("TCP", "http")}
    covered = set().union(*(rule_ports(r) for r in spec["egress"] if "to" not in r))
    assert covered == allowed_anywhere


def test_podmonitor_scrapes_what_the_alert_rules_select() -> None:
    """PodMonitor is a CRD, not in the built-in schemas: check its shape by hand."""
    monitor = by_kind("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"jobLabel", "selector", "podMetricsEndpoints"}
    sts = by_kind("StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    [container] = sts["spec"]["template"]["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert re.fullmatch(r"[0-9]+(ms|s|m)", endpoint["interval"])
    # The job label comes from this pod label: it must say what the rules select.
    job = labels[monitor["spec"]["jobLabel"]]
    rules = (DEPLOY / "prometheus" / "rules" / "credits-meter.rules.yml").read_text()
    assert f'job="{job}"' in rules


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
    assert 'meter = "processor.cli:main"' in project
    assert re.search(r"pip install .*credits-meter", dockerfile().content)


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
