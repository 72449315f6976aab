"""`encode-video --ray` / `--ray-address`: Ray Data workers each load the model once and encode whole
videos; the outputs are the local run's; a worker that dies fails its video only; a rerun skips what
is done. Token authentication on throughout, as Ray 2.60 has it for local clusters. Slow: each test
starts Ray (a local instance, or a 2-node cluster on this machine)."""

from __future__ import annotations

import gc
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Every Ray here in token mode with this token (none is written to ~/.ray). Set before Ray is imported:
# it reads RAY_AUTH_MODE once, as a user's shell would have it set before the command starts.
TOKEN = os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ["RAY_AUTH_MODE"] = "token"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from videos import write_video  # noqa: E402

from vidlstm.tools.batch.cli import encode_video_main  # noqa: E402
from vidlstm.tools.batch.ray_backend import RayBackend  # noqa: E402
from vidlstm.tools.batch.ray_worker import VideoEncoder  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    # Ray Data 2.60's own DataContext() sets its deprecated fields (not our code's doing).
    pytest.mark.filterwarnings("ignore:`use_[a-z_0-9]+` is deprecated:DeprecationWarning"),
    # Ray's shutdown kills its node processes without waiting for them: their Popen objects, freed
    # later by the garbage collector, warn that they are "still running" (Ray's doing, not ours).
    pytest.mark.filterwarnings("ignore:subprocess [0-9]+ is still running:ResourceWarning"),
]


@pytest.fixture(autouse=True)
def _free_rays_processes() -> Iterator[None]:
    """Collects Ray's dropped Popen objects while the filter above holds, not in a later module."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    for index, frames in enumerate((23, 5, 31)):
        write_video(root / f"clip{index}.mp4", frames=frames, first_image=9 * index)
    (root / "nested").mkdir()
    write_video(root / "nested" / "clip3.mp4", frames=12, first_image=40)
    return root


@pytest.fixture(scope="module")
def local_run(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local")
    assert _encode(clips, out, "--jobs", "1") == 0
    return out


def _encode(clips: Path, out: Path, *flags: str) -> int:
    # Paths relative to here, as a user types them: workers must not depend on the driver's folder.
    return encode_video_main(["--quiet", os.path.relpath(clips), "--out", str(out), "--save-state", *flags])


def _statuses(out: Path) -> list[dict[str, str]]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return [{Path(r["source"]).name: r["status"]} for r in map(json.loads, lines)]


def _files(out: Path) -> set[Path]:
    return {p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != "manifest.jsonl"}


def _assert_same_outputs(expected: Path, got: Path, skip: tuple[str, ...] = ()) -> None:
    """The same files, embeddings and final state within 1e-5, the rest (metadata too) equal."""
    assert _files(got) == {p for p in _files(expected) if p.name.split(".")[0] not in skip}
    for name in _files(got):
        a, b = np.load(expected / name), np.load(got / name)
        assert set(a.files) == set(b.files)
        for key in ("embeddings", "state_h", "state_c"):
            np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=0, err_msg=f"{name} {key}")
        np.testing.assert_array_equal(b["frame_indices"], a["frame_indices"])
        np.testing.assert_array_equal(b["timestamps_ms"], a["timestamps_ms"])
        want, got_metadata = json.loads(str(a["metadata"])), json.loads(str(b["metadata"]))
        assert Path(got_metadata.pop("source")).name == Path(want.pop("source")).name  # copied inputs
        assert got_metadata == want


def test_local_ray_equals_the_local_run_and_a_rerun_skips(
    clips: Path, local_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ray"
    assert _encode(clips, out, "--ray", "--workers", "1:2") == 0
    assert not ray.is_initialized()  # the Ray it started is shut down
    _assert_same_outputs(local_run, out)
    assert all(status == "ok" for record in _statuses(out) for status in record.values())
    before = len(_statuses(out))
    # Everything is done: the rerun skips it all without starting Ray.
    monkeypatch.setattr(
        ray, "init", lambda *args, **kwargs: pytest.fail("a rerun with nothing to do started Ray")
    )
    assert _encode(clips, out, "--ray", "--workers", "1") == 0
    assert all(s == "skipped" for record in _statuses(out)[before:] for s in record.values())
    _assert_same_outputs(local_run, out)


def test_a_worker_that_dies_fails_its_video_only(
    clips: Path, local_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = tmp_path / "in"
    shutil.copytree(clips, inputs)
    write_video(inputs / "poison.mp4", frames=8)

    class DyingEncoder(VideoEncoder):  # defined here: Ray ships it to the workers by value
        def encode(self, task):  # type: ignore[no-untyped-def]
            if task.source.name == "poison.mp4":
                os._exit(3)  # the worker process dies mid-run, as a crash or an OOM kill would
            return super().encode(task)

    monkeypatch.setattr(RayBackend, "actor", DyingEncoder)
    out = tmp_path / "out"
    for run in range(2):
        assert _encode(inputs, out, "--ray", "--workers", "2") == 1
        records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        last = {Path(r["source"]).name: r for r in records[-5:]}
        assert last["poison.mp4"]["status"] == "failed"
        assert "RayWorkerDiedError: the Ray worker encoding it died on each of its 2 tries" in str(
            last["poison.mp4"]["error"]
        )
        assert {r["status"] for name, r in last.items() if name != "poison.mp4"} == {
            "skipped" if run else "ok"
        }
        assert not [p for p in out.rglob("*") if ".partial" in p.name]
        _assert_same_outputs(local_run, out)


def _two_node_cluster(tries: int = 3) -> Cluster:
    """A head and a worker node on this machine. Ray waits a fixed 30 s for a node's raylet to
    register, which a 2-core CI machine still busy with the previous test's Ray can miss: that (and
    only that) is tried again."""
    for attempt in range(1, tries + 1):
        cluster = Cluster(initialize_head=False)
        try:
            cluster.add_node(num_cpus=1, include_dashboard=False)
            cluster.add_node(num_cpus=1)
            return cluster
        except Exception as error:
            cluster.shutdown()
            if "timed out during startup" not in str(error) or attempt == tries:
                raise
    raise AssertionError("unreachable")


def test_two_node_cluster_with_token_auth_equals_the_local_run(
    clips: Path, local_run: Path, tmp_path: Path
) -> None:
    cluster = _two_node_cluster()
    try:
        token = tmp_path / "token"
        token.write_text(TOKEN)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # the file alone
        out = tmp_path / "cluster"
        command = [sys.executable, "-m", "vidlstm", "encode-video", "--quiet", "--save-state"]
        command += [str(clips), "--out", str(out), "--ray-address", cluster.address, "--workers", "2"]
        result = subprocess.run(
            [*command, "--ray-token-file", str(token)], env=env, capture_output=True, text=True, timeout=150
        )
        assert result.returncode == 0, result.stderr[-3000:]
        _assert_same_outputs(local_run, out)
        # Without the token: refused (Ray gives up after ~20 s), a usage error that names the fix.
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert f"cannot join the Ray cluster at {cluster.address}" in refused.stderr
        assert "--ray-token-file FILE" in refused.stderr
    finally:
        cluster.shutdown()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray", "--jobs", "2"], "--jobs counts this process's decoders; with Ray, --workers counts"),
        (["--ray", "--device", "cpu"], "--device applies in process"),
        (["--ray", "--server", "localhost:1"], "--server and --ray/--ray-address: pick one"),
        (
            ["--ray", "--workers", "3:2"],
            "must be N or MIN:MAX, whole numbers with 1 <= MIN <= MAX; got '3:2'",
        ),
        (["--ray", "--cpus-per-worker", "0"], "must be a number > 0, got '0'"),
        (["--workers", "2"], "--workers apply with --ray or --ray-address"),
        (["--cpus-per-worker", "1"], "--cpus-per-worker apply with --ray"),  # also at its default
        (["--gpus-per-worker", "0"], "--gpus-per-worker apply with --ray"),
        (["--ray-address", "127.0.0.1:9"], "--ray-address 127.0.0.1:9: nothing accepts connections there"),
        (["--ray", "--ray-token-file", "t"], "--ray-token-file applies with --ray-address"),
    ],
)
def test_ray_usage_errors_before_any_work(
    clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _encode(clips, tmp_path / "out", *flags)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert not ray.is_initialized()
