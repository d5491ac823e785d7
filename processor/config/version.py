"""Added: the version of credits-meter and of what it runs on (`meter --version`,
`meter_build_info`)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Final

__all__ = ["DISTRIBUTION", "build_info", "package_version"]

DISTRIBUTION: Final = "credits-meter"


def package_version(name: str = DISTRIBUTION) -> str:
    """The installed version of a distribution ("unknown" when it is not installed)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def build_info() -> dict[str, str]:
    """The labels of `meter_build_info`: ours, Faust's, aiokafka's and Python's versions."""
    return {
        "version": package_version(),
        "faust": package_version("faust-streaming"),
        "aiokafka": package_version("aiokafka"),
        "python": platform.python_version(),
    }
