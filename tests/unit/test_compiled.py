"""The compiled build's bookkeeping: when a worker may run it, and when it must not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from processor.ops import compiled


def _tree(root: Path) -> Path:
    for package in compiled.PACKAGES:
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "processor" / "engine.py").write_text("RATE = 1\n")
    return root


def _built(root: Path, **manifest: object) -> Path:
    build_dir = compiled.default_build_dir(root)
    build_dir.mkdir(parents=True)
    values = {"digest": compiled.digest(root), "python": sys.version.split()[0], **manifest}
    (build_dir / compiled.MANIFEST).write_text(json.dumps(values))
    return build_dir


def test_a_build_of_the_sources_as_they_are_is_current(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    found = compiled.status(root, _built(root))
    assert found.usable, found.reason


def test_an_edited_source_makes_the_build_stale(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    build_dir = _built(root)
    (root / "processor" / "engine.py").write_text("RATE = 2\n")
    found = compiled.status(root, build_dir)
    assert not found.usable
    assert "sources changed" in found.reason


def test_a_new_file_or_a_data_file_counts_as_a_change(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = compiled.digest(root)
    (root / "schemas" / "contract.json").write_text("{}")
    assert compiled.digest(root) != before


def test_caches_and_compiled_files_do_not_count(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = compiled.digest(root)
    (root / "processor" / "__pycache__").mkdir()
    (root / "processor" / "__pycache__" / "engine.cpython-311.pyc").write_bytes(b"\0")
    (root / "processor" / "engine.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0")
    assert compiled.digest(root) == before


def test_no_build_or_a_failed_build_is_not_run(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    missing = compiled.status(root, compiled.default_build_dir(root))
    assert not missing.usable and "make setup" in missing.reason
    failed = compiled.status(root, _built(root, failed="mypyc exited with 1: error"))
    assert not failed.usable and "mypyc exited with 1" in failed.reason


def test_a_build_for_another_python_is_not_run(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    found = compiled.status(root, _built(root, python="3.10.0"))
    assert not found.usable and "3.10.0" in found.reason


def test_off_runs_interpreted_even_with_a_current_build(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _built(root)
    assert compiled.enter("off", ["worker"], root) == "METER_COMPILED=off"


def test_auto_without_a_current_build_runs_interpreted_and_says_why(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _built(root)
    (root / "processor" / "engine.py").write_text("RATE = 3\n")
    why = compiled.enter("auto", ["worker"], root)
    assert why is not None and "sources changed" in why


def test_require_without_a_current_build_refuses(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(compiled.BuildMissing, match="METER_COMPILED=require: no compiled build"):
        compiled.enter("require", ["worker"], root)


def test_a_process_running_from_a_build_stays_there(tmp_path: Path) -> None:
    # A build's root holds its manifest: a re-run worker, or a child of one.
    build_dir = _built(_tree(tmp_path))
    assert compiled.running_compiled(build_dir)
    assert compiled.enter("require", ["worker"], build_dir) is None


def test_every_compiled_module_exists_in_the_checkout() -> None:
    root = compiled.source_root()
    for module in compiled.MODULES:
        assert (root / module).exists(), module


def test_installed_packages_build_with_the_settings_they_are_given(tmp_path: Path) -> None:
    # A wheel carries no pyproject.toml: the image gives the checkout's (deploy/Dockerfile).
    root = _tree(tmp_path / "site-packages")
    config = tmp_path / "checkout" / "pyproject.toml"
    config.parent.mkdir()
    config.write_text('[tool.mypy]\nplugins = ["pydantic.mypy"]\n')
    # The tree holds none of MODULES, so the compile fails at once, and says so.
    assert compiled.main(["--config", str(config)], root) == 0
    build_dir = compiled.default_build_dir(root)
    assert (build_dir / "pyproject.toml").read_text() == config.read_text()
    found = compiled.status(root, build_dir)
    assert not found.usable and "mypyc exited with" in found.reason


def test_require_fails_the_command_when_the_build_cannot_run(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "pyproject.toml").write_text("[tool.mypy]\n")
    assert compiled.main(["--require"], root) == 1


def test_installed_packages_without_settings_are_refused_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _tree(tmp_path)
    with pytest.raises(SystemExit) as exited:
        compiled.main([], root)
    assert exited.value.code == 2
    assert "give the checkout's (--config)" in capsys.readouterr().err
    assert not compiled.default_build_dir(root).exists()
