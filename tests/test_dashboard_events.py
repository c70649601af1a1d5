"""The running search page reads its epoch-end events incrementally (issue 14: a 200-epoch page decoded
every event on every view): each view decodes only the events written since the last, and the result is
what a full read gives (latest attempt wins per epoch; non-epoch progress events are skipped)."""
from __future__ import annotations

from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from api.dashboard.views import EpochEventCache, search_history
from storage.models import Base, Job, JobEvent


def _epoch(e: int, miou: float, attempt: int = 0) -> JobEvent:
    return JobEvent(job_id="j1", tenant_id="t", type="progress", attempt=attempt, message=f"epoch {e}",
                    data={"epoch": e, "phase": "search", "metrics": {"supernet_miou": miou, "w_loss": 1.0},
                          "expected_latency_ms": 9.0, "alphas": [[[0.5, 0.5]]], "ops": ["a", "b"]})


def test_epoch_events_are_read_incrementally_and_latest_attempt_wins():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    cache = EpochEventCache()
    with Session(engine) as s:
        s.add(Job(id="j1", tenant_id="t", kind="search", status="running", spec={}))
        s.add_all([_epoch(1, 0.1), JobEvent(job_id="j1", tenant_id="t", type="progress", data={"step": 3}),
                   _epoch(2, 0.2)])
        s.commit()
        hist, ops = search_history(s, "j1", None, cache)
        assert [h["epoch"] for h in hist] == [1, 2] and [h["supernet_miou"] for h in hist] == [0.1, 0.2]
        assert ops == ["a", "b"]
        # rows already read are not read again: a change to one of them is not seen by the next view
        s.execute(update(JobEvent).where(JobEvent.message == "epoch 1").values(
            data={"epoch": 1, "metrics": {"supernet_miou": 0.9}}))
        # a retry's epoch 2 and a new epoch 3 are read, and they win
        s.add_all([_epoch(2, 0.25, attempt=1), _epoch(3, 0.3, attempt=1)])
        s.commit()
        hist, _ = search_history(s, "j1", None, cache)
        assert [(h["epoch"], h["supernet_miou"]) for h in hist] == [(1, 0.1), (2, 0.25), (3, 0.3)]
        # a new cache (another API process) reads everything
        hist, _ = search_history(s, "j1", None, EpochEventCache())
        assert [(h["epoch"], h["supernet_miou"]) for h in hist] == [(1, 0.9), (2, 0.25), (3, 0.3)]
        # a finished job's report replaces the events and the cache lets the job go
        hist, _ = search_history(s, "j1", {"history": [{"epoch": 1, "mean": {}}]}, cache)
        assert [h["epoch"] for h in hist] == [1] and "j1" not in cache._d
