"""The `vidlstm` command. Each subcommand's module is imported only when it runs, so the light
client install (`pip install vidlstm`, no torch) can run `vidlstm info`, `vidlstm health` and
`vidlstm encode-images`; tests/test_packaging.py runs them with the server extra made unimportable."""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

# name -> (module:function taking argv, one-line help)
COMMANDS = {
    "serve": ("vidlstm.service.cli:serve_main", "run the gRPC server (needs vidlstm[server])"),
    "info": ("vidlstm.clients.cli:info_main", "describe the model a server serves"),
    "health": ("vidlstm.clients.cli:health_main", "exit 0 if a server's health service says SERVING"),
    "encode-images": ("vidlstm.clients.cli:encode_images_main", "embed image files as one sequence"),
    "push-weights": ("vidlstm.clients.cli:push_weights_main", "install new weights on a running server"),
    "encode-video": ("vidlstm.tools.batch.cli:encode_video_main", "embed video files and folders, resumably"),
    "import": ("vidlstm.tools.import_cli:import_main", "turn an SB3 or CleanRL agent into a checkpoint"),
    "models": ("vidlstm.tools.models_cli:models_main", "list encoders; fetch a pretrained checkpoint"),
}


def _usage() -> str:
    lines = ["usage: vidlstm COMMAND [options]   (vidlstm COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<16}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"vidlstm: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[argv[0]][0].split(":")
    command = getattr(importlib.import_module(module_name), function_name)
    return int(command(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
