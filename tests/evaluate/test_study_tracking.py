"""A study that raises closes its parent run: FAILED, or KILLED on Ctrl-C."""

from __future__ import annotations

from typing import Any

import pytest

from visiondeck.evaluate.tracking import unfinished_on_error


class Recorder:
    def __init__(self) -> None:
        self.finished: list[dict[str, Any]] = []

    def finish(self, *, metrics: Any, artifacts: Any, status: str = "FINISHED") -> None:
        self.finished.append({"metrics": dict(metrics), "artifacts": list(artifacts),
                              "status": status})


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("cell 3 broke"), "FAILED"),
                                                (KeyboardInterrupt(), "KILLED")])
def test_an_error_ends_the_parent_run_and_is_raised_again(error: BaseException,
                                                          status: str) -> None:
    tracker = Recorder()
    with pytest.raises(type(error)), unfinished_on_error(tracker):  # type: ignore[arg-type]
        raise error
    assert tracker.finished == [{"metrics": {}, "artifacts": [], "status": status}]


def test_success_leaves_the_finish_to_the_caller() -> None:
    tracker = Recorder()
    with unfinished_on_error(tracker):  # type: ignore[arg-type]
        pass
    assert tracker.finished == []


def test_no_tracker_tracks_nothing() -> None:
    with pytest.raises(ValueError), unfinished_on_error(None):
        raise ValueError("untracked study")
