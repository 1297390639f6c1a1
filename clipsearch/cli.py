"""`clipsearch <command>`: one command for every part of clipsearch.

Each subcommand runs the same code as its `python -m` form, with the rest of the command
line; `clipsearch <command> --help` lists its settings (for the services and the demo, with
their environment variables). A subcommand's module is imported only when it runs, so
`clipsearch gateway` and `clipsearch indexer` load neither torch nor the training code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # its `main(argv, prog)`
    summary: str
    leading: tuple[str, ...] = ()  # arguments that come before the user's (a sub-parser's name)


COMMANDS = {
    "encoder": Command("services.encoder.__main__", "the encoder gRPC service (ENCODER_*)"),
    "indexer": Command("services.indexer.__main__", "index a collection into the vector store (INDEXER_*)"),
    "gateway": Command(
        "services.gateway.__main__", "the search gateway: HTTP API, web page, gRPC (GATEWAY_*)"
    ),
    "train": Command("training.__main__", "train or fine-tune a CLIP model", leading=("train",)),
    "distill-text": Command(
        "training.__main__",
        "distil a checkpoint's text tower into fewer layers",
        leading=("distill-text",),
    ),
    "evaluate": Command("training.evaluate", "evaluate a checkpoint: metrics, pictures, model card"),
    "demo": Command("clipsearch.demo", "MNIST search on this machine, end to end (DEMO_*)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: clipsearch <command> [options]    (clipsearch <command> --help for its settings)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"clipsearch: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(command.module)
    prog = "clipsearch" if command.leading else f"clipsearch {name}"
    return int(module.main([*command.leading, *rest], prog=prog))


if __name__ == "__main__":
    sys.exit(main())
