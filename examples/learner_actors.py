"""Actors play ALE Pong through the server while a learner trains the encoder and pushes new weights.

The learner (this process) trains a copy of the model `vidlstm serve` serves by default on a real loss,
predicting the next frame from the LSTM output (gradients through the LSTM and the CNN), and pushes
its weights every --steps-per-push steps. Each actor (a process) steps every frame of its own game
through one stream and records the weights version of each answer: streams run on across installs.

Start a server that accepts pushes, then run this with its admin token:
    VIDLSTM_ADMIN_TOKENS=admin-secret vidlstm serve
    VIDLSTM_ADMIN_TOKEN=admin-secret python examples/learner_actors.py --actors 2 --pushes 5
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np

from vidlstm.clients import EncoderClient

START_TIMEOUT_S = 120.0  # an actor's spawn imports gymnasium, ALE and gRPC; the learner's torch
SEQUENCE = 16  # frames per learner step (truncated backprop through time, state carried over)
POOL = 4  # the next frame is predicted at 84/4 = 21x21 pixels


def random_play(seed: int) -> Iterator[tuple[np.ndarray, bool]]:
    """Raw RGB Pong frames [210, 160, 3], each with whether it starts an episode. Actions are random:
    a real actor's policy would choose them from the frame's embedding."""
    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=4)
    env.action_space.seed(seed)
    frame, _ = env.reset(seed=seed)
    start = True
    try:
        while True:
            yield frame, start
            frame, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if start := bool(terminated or truncated):
                frame, _ = env.reset()
    finally:
        env.close()


def run_actor(
    index: int, args: argparse.Namespace, ready: Barrier, final: Synchronized[int], reports: Queue[Any]
) -> None:
    """Steps frames until the learner has set `final` and a step ran on that version (or later), or
    the learner's process is gone (killed: this actor would be re-parented and stream on forever)."""
    report: dict[str, Any] = {"actor": index, "steps": 0, "versions": [], "error": None}
    learner = os.getppid()
    try:
        with (
            EncoderClient(args.server, token=args.token) as client,
            client.session(pixel_format="RGB") as session,
        ):
            for frame, start in random_play(args.seed + index):
                session.step(frame, episode_start=start)  # RGB: the server converts and resizes
                report["steps"] += 1
                version = session.weights.number if session.weights else 0
                if version not in report["versions"]:
                    report["versions"].append(version)
                if report["steps"] == 1:
                    with contextlib.suppress(threading.BrokenBarrierError):  # whoever broke it reports why
                        ready.wait(START_TIMEOUT_S)  # the learner pushes once every actor streams
                if 0 < final.value <= version or os.getppid() != learner:
                    break
    except Exception as error:
        ready.abort()  # so that no one waits for this actor
        report["error"] = f"{type(error).__name__}: {error}"
    reports.put(report)


class Learner:
    """A trainable copy of the model `vidlstm serve` serves by default, and a linear head: the embedding
    of frame t predicts frame t+1 pooled to 21x21, so gradients run through the LSTM and the CNN. The
    LSTM state carries over from one sequence to the next, detached. Only the learner imports torch
    (here): an actor needs just the light client."""

    def __init__(self, seed: int) -> None:
        import torch

        from vidlstm.models import build_model, default_spec

        torch.manual_seed(seed)
        self.model = build_model(default_spec()).train()  # the served weights: training starts there
        inp = self.model.spec.input
        self.head = torch.nn.Linear(self.model.out_size, (inp.height // POOL) * (inp.width // POOL))
        self.optimizer = torch.optim.Adam([*self.model.parameters(), *self.head.parameters()], lr=1e-4)
        self.state = self.model.initial_state(1)
        self.play = random_play(seed)
        self.chunk = [next(self.play)]

    def step(self) -> float:
        """One optimizer step on the next SEQUENCE frames; returns the loss."""
        import torch
        from torch.nn.functional import avg_pool2d

        from vidlstm.models import PixelFormat, prepare_frames

        # Each sequence starts with the frame the last one ended on (there, its last target).
        self.chunk = self.chunk[-1:] + list(itertools.islice(self.play, SEQUENCE))
        # Time-major, one env: frames uint8 [T+1, 1, 1, H, W], episode_start [T+1, 1].
        rgb = np.stack([frame for frame, _ in self.chunk])
        frames = torch.from_numpy(prepare_frames(rgb, PixelFormat.RGB, self.model.spec.input))[:, None]
        starts = torch.tensor([[start] for _, start in self.chunk])
        embeddings, state = self.model(frames[:-1], self.state, starts[:-1])
        target = avg_pool2d(frames[1:, :, 0].float() / 255, POOL).flatten(2)  # [T, 1, h*w]
        # A first frame of an episode cannot be predicted from the frame before: masked out.
        loss = ((self.head(embeddings) - target).pow(2).mean(-1) * ~starts[1:]).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.state = {name: tensor.detach() for name, tensor in state.items()}
        return float(loss.item())


def train_and_push(args: argparse.Namespace, ready: Barrier, summary: dict[str, Any]) -> None:
    """Trains once every actor streams, and pushes the weights every `steps_per_push` steps."""
    from vidlstm.models import checkpoint_bytes

    learner = Learner(args.seed + args.actors)
    with EncoderClient(args.server, token=args.admin_token) as admin:
        try:
            ready.wait(START_TIMEOUT_S)
        except threading.BrokenBarrierError:
            raise RuntimeError(f"an actor failed, or did not stream within {START_TIMEOUT_S} s") from None
        for push in range(1, args.pushes + 1):
            summary["losses"] += [learner.step() for _ in range(args.steps_per_push)]
            step = push * args.steps_per_push
            weights = checkpoint_bytes(learner.model, learner_step=step)
            summary["pushes"].append(dataclasses.asdict(admin.push_weights(weights, learner_step=step)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--admin-token", default=os.environ.get("VIDLSTM_ADMIN_TOKEN"))
    parser.add_argument("--token", default=os.environ.get("VIDLSTM_TOKEN"), help="the actors' token")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--steps-per-push", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-summary", help="also write the summary to this JSON file")
    args = parser.parse_args(argv)

    # SIGTERM (a scheduler stopping the job) unwinds like an error, so the actors are told to stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    context = mp.get_context("spawn")  # no forked gRPC channels or torch threads in the actors
    ready, final, reports = context.Barrier(args.actors + 1), context.Value("q", 0), context.Queue()
    actors = [
        context.Process(target=run_actor, args=(i, args, ready, final, reports), daemon=True)
        for i in range(args.actors)
    ]
    for actor in actors:
        actor.start()
    summary: dict[str, Any] = {"pushes": [], "losses": [], "actors": [], "learner_error": None}
    try:
        train_and_push(args, ready, summary)
    except Exception as error:
        ready.abort()
        summary["learner_error"] = f"{type(error).__name__}: {error}"
    finally:
        final.value = summary["pushes"][-1]["weights"]["number"] if summary["pushes"] else 1
    # Read before the joins: a process may not exit while its report sits in the pipe. An actor that
    # died without one (killed) makes this raise queue.Empty.
    summary["actors"] = [reports.get(timeout=START_TIMEOUT_S) for _ in actors]
    for actor in actors:
        actor.join(timeout=10)
    return print_summary(summary, args.json_summary)


def print_summary(summary: dict[str, Any], json_path: str | None) -> int:
    """Prints the summary (and writes it as JSON); 1 when anything failed or no push was served."""
    served = summary["versions_served"] = sorted({v for a in summary["actors"] for v in a["versions"]})
    weights = [push["weights"] for push in summary["pushes"]]
    pushes = ", ".join(f"v{w['number']} (learner step {w['learner_step']})" for w in weights)
    print(f"pushes: {pushes or 'none'}")
    print("learner losses:", " ".join(f"{loss:.4f}" for loss in summary["losses"]))
    errors = [f"learner: {summary['learner_error']}"] if summary["learner_error"] else []
    for actor in sorted(summary["actors"], key=lambda report: report["actor"]):
        print(f"actor {actor['actor']}: {actor['steps']} steps on versions {actor['versions']}")
        errors += [f"actor {actor['actor']}: {actor['error']}"] if actor["error"] else []
    if len(served) < 2:
        errors.append(f"the actors saw only versions {served}: no push was served")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if json_path:
        with open(json_path, "w") as file:
            json.dump(summary, file, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
