"""pytest plugin of bench/gpu_check.py's ``pytest_gpu`` part: one JSON line per test as it runs, cheap tests first.

    python -m pytest -p bench.gpu_check_pytest --gpu-check-log FILE -m gpu ...   (from the repository root)

pytest writes a JUnit file only when the whole session ends, so a part killed at its timeout (a
cold inductor compile can take minutes) used to leave nothing. With this plugin each test appends
``{"event": "start", "nodeid": ...}`` when it starts and ``{"event": "done", "nodeid", "outcome",
"seconds", "message"}`` when its teardown ends, flushed to disk at once: a killed part keeps every
finished test's own outcome and duration, and names the test that was running. The collected tests
are reordered cheapest first (stable): plain tests, then those that compile, then the training ones
(:func:`cost_rank`). Read the file back with ``gpu_check_parts.pytest_results``.
"""

from __future__ import annotations

import json
import os

_state: dict = {"log": None, "phases": {}}


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--gpu-check-log", default=None, help="append one JSON line per test start and end here (bench/gpu_check.py)"
    )


def pytest_configure(config) -> None:
    _state["log"] = config.getoption("gpu_check_log")


def cost_rank(nodeid: str) -> int:
    """0 for a plain test, +1 if it compiles, +1 if it trains (tests/test_train.py): the run order."""
    n = nodeid.lower()
    return int("compile" in n) + int("test_train.py" in n)


def pytest_collection_modifyitems(session, config, items) -> None:
    items.sort(key=lambda item: cost_rank(item.nodeid))


def _write(record: dict) -> None:
    if not _state["log"]:
        return
    with open(_state["log"], "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def pytest_runtest_logstart(nodeid, location) -> None:
    _write({"event": "start", "nodeid": nodeid})


def _outcome(phases: dict) -> str:
    """One word for a test from its setup / call / teardown reports."""
    setup, call, teardown = (phases.get(w) for w in ("setup", "call", "teardown"))
    if setup is not None and setup.outcome != "passed":
        return "error" if setup.outcome == "failed" else "skipped"
    if call is None:
        return "error"
    if hasattr(call, "wasxfail"):
        return "xfailed" if call.outcome == "skipped" else "xpassed"
    if call.outcome == "passed" and teardown is not None and teardown.outcome == "failed":
        return "error"
    return call.outcome


def pytest_runtest_logreport(report) -> None:
    phases = _state["phases"].setdefault(report.nodeid, {})
    phases[report.when] = report
    if report.when != "teardown":
        return
    del _state["phases"][report.nodeid]
    outcome = _outcome(phases)
    bad = next((r for r in phases.values() if r.outcome != "passed" and r.longrepr), None)
    record = {
        "event": "done",
        "nodeid": report.nodeid,
        "outcome": outcome,
        "seconds": round(sum(r.duration for r in phases.values()), 3),
    }
    if bad is not None and outcome != "passed":
        record["message"] = str(bad.longreprtext if hasattr(bad, "longreprtext") else bad.longrepr)[-600:]
    _write(record)
