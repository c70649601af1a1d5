"""The job child's progress pulse (issue 13): a silent phase still reports its clock, ETAs follow
the counters, a retrain's time budget caps the ETA, and a pulse never adds an event message."""
from __future__ import annotations

import threading
import time

from worker.child import Pulse, time_budget_s


def test_pulse_repeats_the_last_event_with_clocks_and_no_message():
    sent: list[dict] = []
    p = Pulse(sent.append, interval_s=0.1)
    stop = threading.Event()
    t = threading.Thread(target=p.run, args=(stop,), daemon=True)
    t.start()
    p({"phase": "measure", "message": "measuring the derived network end to end"})
    time.sleep(0.45)
    stop.set()
    t.join(2)
    assert sent[0]["message"].startswith("measuring") and len(sent) >= 3, sent
    pulses = sent[1:]
    assert all("message" not in e and e["phase"] == "measure" for e in pulses)
    assert pulses[-1]["phase_elapsed_s"] >= 0.2 and pulses[-1]["elapsed_s"] >= pulses[0]["elapsed_s"]


def test_eta_from_counters_and_capped_by_a_time_budget():
    sent: list[dict] = []
    p = Pulse(sent.append, budget_s=5.0)
    p.t0 = p.phase_t0 = time.monotonic() - 10.0  # pretend the phase has run 10 s
    p.last = {"phase": "search"}
    p({"phase": "search", "epoch": 1, "epochs": 4, "step": 5, "steps": 10})  # 1/8 done in 10 s -> 70 s left
    assert 65 <= sent[-1]["eta_s"] <= 75, sent[-1]
    p.last = {"phase": "train"}
    p({"phase": "train", "epoch": 1, "epochs": 100, "step": 10, "steps": 1000})  # budget 5 s, 10 s in: 0 left
    assert sent[-1]["eta_s"] <= 5.0
    assert time_budget_s({"train": {"time_budget_s": 30}}) == 30.0 and time_budget_s({"search": {}}) == 0.0
