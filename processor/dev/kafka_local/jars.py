"""Kafka's broker jars: fetched by Maven from deploy/kafka/pom.xml, or a ready-made libs dir."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from processor.dev.kafka_local.host import (
    LIBS_ENV,
    LocalKafkaError,
    checkout_root,
    file_lock,
    java_executable,
)

_STAMP_NAME = ".complete.json"
# A libs dir without these cannot start a broker that logs; checked besides the stamp
# so a hand-made METER_KAFKA_LIBS dir (e.g. a Kafka distribution's libs/) is vetted too.
_REQUIRED_JAR_PREFIXES = (
    "kafka_2.13-",
    "kafka-clients-",
    "kafka-server-",
    "kafka-raft-",
    "kafka-metadata-",
    "kafka-storage-",
    "scala-library-",
    "slf4j-api-",
    "log4j-core-",
    "log4j-slf4j2-impl-",
    "jackson-dataformat-yaml-",
)


def _missing_jars(libs: Path) -> list[str]:
    names = [p.name for p in libs.glob("*.jar")] if libs.is_dir() else []
    return [pre for pre in _REQUIRED_JAR_PREFIXES if not any(n.startswith(pre) for n in names)]


def _read_stamp(stamp: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _libs_complete(libs: Path, pom_digest: str) -> bool:
    stamp = _read_stamp(libs / _STAMP_NAME)
    if stamp is None or stamp.get("pom_sha256") != pom_digest:
        return False
    jars = stamp.get("jars")
    if not isinstance(jars, list) or not all((libs / str(j)).is_file() for j in jars):
        return False
    return not _missing_jars(libs)


def ensure_jars(repo_root: Path | None = None) -> Path:
    """Return a directory holding Kafka's broker jars, fetching them with Maven if needed.

    `METER_KAFKA_LIBS` points at a ready-made libs dir and skips Maven entirely.
    Otherwise `<repo>/deploy/kafka/target/libs` is (re)filled when it is missing,
    incomplete, or was fetched for a different pom (i.e. another Kafka version).
    """
    override = os.environ.get(LIBS_ENV)
    if override:
        libs = Path(override).expanduser().resolve()
        missing = _missing_jars(libs)
        if missing:
            raise LocalKafkaError(
                f"{LIBS_ENV}={override} does not hold the jars a broker needs; "
                f"missing: {', '.join(p + '*.jar' for p in missing)}"
            )
        return libs

    root = repo_root.resolve() if repo_root is not None else checkout_root()
    pom = root / "deploy" / "kafka" / "pom.xml" if root is not None else None
    if pom is None or not pom.is_file():
        raise LocalKafkaError(
            "cannot find deploy/kafka/pom.xml (not running from a checkout?); "
            f"set {LIBS_ENV} to a directory of Kafka broker jars"
        )
    libs = pom.parent / "target" / "libs"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if _libs_complete(libs, digest):
        return libs

    java_executable()  # Maven needs it as well, and the broker will: fail early and clearly.
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            "Maven (`mvn`) is needed once to fetch Kafka's jars from Maven Central but is "
            f"not on PATH; install it or set {LIBS_ENV} to a directory of Kafka broker jars"
        )
    with file_lock(pom.parent / "target" / ".libs.lock"):
        if _libs_complete(libs, digest):  # another process fetched them while we waited
            return libs
        old = _read_stamp(libs / _STAMP_NAME)
        if old is not None and old.get("pom_sha256") != digest:
            # Jars of the previous Kafka version would sit next to the new ones on the
            # wildcard classpath and the JVM would load whichever it lists first.
            shutil.rmtree(libs)
        cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                cmd, capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(f"`{' '.join(cmd)}` did not finish in 15 minutes") from exc
        if proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise LocalKafkaError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{output}")
        missing = _missing_jars(libs)
        if missing:
            raise LocalKafkaError(f"Maven finished but {libs} still lacks {missing}")
        stamp = {"pom_sha256": digest, "jars": sorted(p.name for p in libs.glob("*.jar"))}
        (libs / _STAMP_NAME).write_text(json.dumps(stamp, indent=1) + "\n")
    return libs
