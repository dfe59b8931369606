"""A stand-in SLA source for `invoke notify.sla --source tests.sla_stub:due_soon`: the
incidents come from the JSON file named by $MHN_SLA_FILE (the incident capability
provides the real one)."""

from __future__ import annotations

import json
import os


def due_soon(within_minutes: int) -> list[dict]:
    with open(os.environ["MHN_SLA_FILE"], encoding="utf-8") as fh:
        return [i for i in json.load(fh) if i.get("minutes_left", 0) <= within_minutes]
