"""The installed version of this distribution (``tl-circuits``): in every graph's meta and every sweep cell's key."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed version of the distribution ``tl-circuits`` ("unknown" when it is not installed)."""
    try:
        return version("tl-circuits")
    except PackageNotFoundError:
        return "unknown"
