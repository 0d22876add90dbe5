"""Counts of the fidelity matrix, printed at the end of a run (also under pytest-xdist: each
case reports its outcome through its user properties)."""

from __future__ import annotations

import collections

COUNTS: collections.Counter = collections.Counter()


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name != "fidelity":
            continue
        COUNTS["cases"] += 1
        if value["status"] != "ran":
            COUNTS["peft cannot build"] += 1
        elif value["expected_refusal"]:
            COUNTS["refusals expected"] += 1
            COUNTS["refused by name"] += value["refused"]
        else:
            COUNTS["built"] += 1
            COUNTS["attach == PEFT"] += value["attach_ok"]
            COUNTS["merged == PEFT unmerged"] += value["merged_ok"]
            COUNTS["merge refused by name (lora_bias)"] += value["merge_refused"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not COUNTS:
        return
    tr = terminalreporter
    tr.section("fidelity matrix")
    for key in ("cases", "peft cannot build", "built", "attach == PEFT", "merged == PEFT unmerged",
                "merge refused by name (lora_bias)", "refusals expected", "refused by name"):
        tr.write_line(f"{COUNTS[key]:5d}  {key}")
