"""ALE Pong, 8 envs in one vector env, observations replaced by vidlstm embeddings.

Start a server first (`make run`), then:
    python examples/atari_pong.py --server localhost:50051 --envs 8 --steps 300
"""

from __future__ import annotations

import argparse
import time

import ale_py
import gymnasium as gym
import numpy as np

from vidlstm.clients.gym import VectorEmbeddingObservation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    gym.register_envs(ale_py)
    # Raw 210x160 RGB frames; the server converts and resizes them to its model's input.
    pong = gym.vector.SyncVectorEnv([lambda: gym.make("ALE/Pong-v5") for _ in range(args.envs)])
    envs = VectorEmbeddingObservation(pong, args.server)
    embeddings, _ = envs.reset(seed=0)
    started = time.perf_counter()
    episodes = 0
    for _ in range(args.steps):
        embeddings, _, terminated, truncated, _ = envs.step(envs.action_space.sample())
        episodes += int(np.sum(terminated | truncated))
    elapsed = time.perf_counter() - started
    envs.close()
    frames = args.steps * args.envs
    print(
        f"{args.envs} envs x {args.steps} steps: {frames / elapsed:,.0f} frames/s "
        f"(env + embedding), embeddings {embeddings.shape}, {episodes} episodes ended"
    )


if __name__ == "__main__":
    main()
