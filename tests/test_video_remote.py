"""Videos on a server: `encode-video --server --jobs N` keeps N uploads in flight, so the server's
batcher sees several videos at once; the outputs are those of the local run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import serving
from videos import write_video

from vidlstm.clients import EncoderClient
from vidlstm.models import InferenceModel, ModelSpec, build_model, checkpoint_bytes, default_spec
from vidlstm.tools.batch.backends import RemoteBackend
from vidlstm.tools.batch.cli import encode_video_main
from vidlstm.tools.batch.inputs import expand_inputs
from vidlstm.tools.batch.runner import RunOptions, run


def test_jobs_keep_several_uploads_in_flight(model: InferenceModel, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(4):
        write_video(inputs / f"clip{index}.mp4", frames=90, width=160, height=120, first_image=index)
    most = 0
    with serving(model, video_chunk_frames=8) as server:
        done = threading.Event()

        def watch() -> None:
            nonlocal most
            while not done.is_set():
                most = max(most, server.live_envs)  # a video holds one state slot while it runs
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            args = [str(inputs), "--out", str(tmp_path / "remote"), "--server", server.address]
            assert encode_video_main(["--quiet", *args, "--jobs", "3"]) == 0
        finally:
            done.set()
            watcher.join()
    assert most >= 2
    local = ["--quiet", str(inputs), "--out", str(tmp_path / "local"), "--device", "cpu", "--jobs", "1"]
    assert encode_video_main(local) == 0
    for index in range(4):
        name = f"clip{index}.mp4.npz"
        remote, here = np.load(tmp_path / "remote" / name), np.load(tmp_path / "local" / name)
        np.testing.assert_allclose(remote["embeddings"], here["embeddings"], atol=1e-5, rtol=0)
        assert remote["frame_indices"].tolist() == list(range(90))


def test_a_servers_gray_outputs_are_recorded_as_luma(
    model: InferenceModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server decodes a gray model's frames from the luma plane: its outputs carry the options and
    fingerprint of the local default (luma) run, so either run skips the other's; --gray and
    --decoder, which apply in process, are usage errors with --server."""
    video = write_video(tmp_path / "clip.mp4", frames=12, width=160, height=120)
    out = tmp_path / "out"
    with serving(model) as server:
        remote = ["--quiet", str(video), "--out", str(out), "--server", server.address]
        assert encode_video_main(remote) == 0
        for flags in (["--gray", "rgb"], ["--decoder", "opencv"]):
            with pytest.raises(SystemExit) as exit_:
                encode_video_main([*remote, *flags])
            assert exit_.value.code == 2
            assert "apply in process" in capsys.readouterr().err
    metadata = json.loads(str(np.load(out / "clip.mp4.npz")["metadata"]))
    assert metadata["options"]["gray"] == "luma"
    local = ["--quiet", str(video), "--out", str(out), "--device", "cpu"]
    assert encode_video_main(local) == 0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [line["status"] for line in manifest] == ["ok", "skipped"]


def test_weights_pushed_during_a_remote_run_fail_the_video_instead_of_mislabelling_it(tmp_path: Path) -> None:
    """The run's outputs name the weights the server served when it started; a video embedded on
    weights pushed since is not written under that name."""
    video = write_video(tmp_path / "clip.mp4", frames=12, width=84, height=84)
    served = InferenceModel(build_model(default_spec()), torch.device("cpu"))  # changed by the push
    learner = checkpoint_bytes(build_model(ModelSpec(seed=31)))
    with serving(served, admin_tokens=("admin",)) as server, EncoderClient(server.address) as client:
        backend = RemoteBackend(client, jobs=1)
        with EncoderClient(server.address, token="admin") as admin:
            admin.push_weights(learner)
        out = tmp_path / "out"
        assert run(expand_inputs([str(video)]), backend, RunOptions(out, quiet=True)) == 1
    assert not (out / "clip.mp4.npz").exists()
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert "the server's weights changed during this run" in record["error"]
