"""examples/learner_actors.py end to end: a real `vidlstm serve` taking pushes while actor streams run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TOKEN, ServeProcess

EXAMPLE = Path(__file__).parents[1] / "examples" / "learner_actors.py"
ADMIN_TOKEN = "learner-secret"


def _example(server: ServeProcess, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--server", server.address, "--token", TOKEN, *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # the learner shares two cores with the server
    )


@pytest.mark.slow
def test_actors_stream_on_every_version_the_learner_pushes(tmp_path: Path) -> None:
    admin_tokens = tmp_path / "admin-tokens"
    admin_tokens.write_text(f"{ADMIN_TOKEN}\n")
    summary_path = tmp_path / "summary.json"
    small = ["--actors", "2", "--steps-per-push", "2", "--json-summary", str(summary_path)]
    server = ServeProcess("--admin-tokens-file", str(admin_tokens))
    try:
        run = _example(server, "--admin-token", ADMIN_TOKEN, "--pushes", "3", *small)
        refused = _example(server, "--admin-token", TOKEN, "--pushes", "1", "--actors", "1")
    finally:
        server.close()
    assert run.returncode == 0, run.stdout + run.stderr + "".join(server.lines[-20:])
    summary = json.loads(summary_path.read_text())
    pushed = [push["weights"] for push in summary["pushes"]]
    assert [(weights["number"], weights["learner_step"]) for weights in pushed] == [(2, 2), (3, 4), (4, 6)]
    assert len({weights["weights_hash"] for weights in pushed}) == 3  # each push after training steps
    assert len(summary["losses"]) == 6
    assert all(math.isfinite(loss) for loss in summary["losses"])
    # The learner pushes only once every actor streams, and an actor stops only after a step on
    # the last push: each saw the first and the last version, and versions only go up.
    for actor in summary["actors"]:
        assert actor["error"] is None
        assert actor["versions"][0] == 1
        assert actor["versions"][-1] == 4
        assert actor["versions"] == sorted(actor["versions"])
    assert summary["versions_served"] == [1, 2, 3, 4]
    assert "pushes: v2 (learner step 2), v3 (learner step 4), v4 (learner step 6)\n" in run.stdout
    assert "Warning" not in run.stderr  # warnings are errors here too, in the example's processes

    # An inference token cannot push: the learner's error is reported and the exit code says so.
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "error: learner: PermissionDeniedError" in refused.stderr
    assert "pushes: none\n" in refused.stdout


@pytest.mark.slow
def test_a_learner_stopped_with_sigterm_stops_its_actors(tmp_path: Path) -> None:
    """A scheduler stopping the job: the actors' streams end too, none keeps stepping orphaned."""
    admin_tokens = tmp_path / "admin-tokens"
    admin_tokens.write_text(f"{ADMIN_TOKEN}\n")
    server = ServeProcess("--admin-tokens-file", str(admin_tokens))
    try:
        command = [sys.executable, str(EXAMPLE), "--server", server.address, "--token", TOKEN]
        command += ["--admin-token", ADMIN_TOKEN, "--actors", "2", "--pushes", "1000"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as run:
            _wait(
                lambda: server.metric("vidlstm_weight_installs_total") >= 1
            )  # actors stream, learner pushes
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=60) != 0
        _wait(lambda: server.metric("vidlstm_live_streams") == 0)
    finally:
        server.close()


def _wait(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
