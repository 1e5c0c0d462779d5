"""Notebooks run under nbmake in their quick form: CIRCUITS_QUICK=1 shrinks their sizes (set for each notebook
run only, so that the tests collected beside them see the environment unchanged)."""

import os


def pytest_runtest_setup(item):
    item.config._circuits_quick = os.environ.get("CIRCUITS_QUICK")
    os.environ["CIRCUITS_QUICK"] = "1"


def pytest_runtest_teardown(item):
    previous = item.config._circuits_quick
    if previous is None:
        os.environ.pop("CIRCUITS_QUICK", None)
    else:
        os.environ["CIRCUITS_QUICK"] = previous
