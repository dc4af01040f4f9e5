"""The `medrag` command line: the parser assembled from one module per command group, and `main`.

    corpus.py     corpus validate | sample, import medpix | covid-cxr
    index.py      index build | info | verify | add | remove
    query.py      retrieve, ask
    eval.py       eval retrieval | qa
    finetune.py   finetune align | pairs | dpo | sft
    demo.py       demo
    serve.py      serve (the HTTP API and web page, rag.serve)

Each module declares its commands' flags next to the handler that reads them. Heavy libraries are
imported inside the handlers, so `medrag --help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from rag.cli import corpus, demo, finetune, index, query, serve
from rag.cli import eval as evaluation  # renamed: `eval` would hide the builtin here

# In the order `medrag --help` lists the commands.
REGISTER = (corpus.register, index.register, query.register_retrieve, evaluation.register, query.register_ask,
            finetune.register, demo.register, serve.register)


def build_parser() -> argparse.ArgumentParser:
    """`medrag` and every subcommand, each with its handler as `func`."""
    parser = argparse.ArgumentParser(prog="medrag", description="Evidence-grounded medical VLM: corpora, indexes, "
                                     "retrieval, answering and preference tuning.")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the model libraries' per-load progress bars")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in REGISTER:
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `medrag ARGV` (default: the process's arguments) and return its exit code: 2 for bad input,
    130 when interrupted; argparse exits 2 itself on bad flags."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        # `rag` hides the model libraries' per-file "Loading weights" bars (rag/__init__.py); they read
        # the variable when first imported, inside the handlers, so this still shows them.
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # Every write is atomic, so an interrupted command changed nothing; say so instead of a traceback.
        print("medrag: interrupted; nothing was changed", file=sys.stderr)
        return 130
    except Exception as exc:
        # Bad input or a bad environment gets one clear message, not a traceback; bugs still raise.
        if not isinstance(exc, _user_error_types()):
            raise
        print(f"medrag: error: {exc}", file=sys.stderr)
        return 2


def _user_error_types() -> tuple[type[Exception], ...]:
    """Errors that mean bad input, a damaged index, a missing model or an OS refusal (disk full,
    permission, unreadable image). Looked up in sys.modules: a module never imported cannot have
    raised its error, and importing it here would cost seconds."""
    types: list[type[Exception]] = [ValueError, OSError]
    for module, name in (("rag.index_bundle", "BundleError"), ("rag.encoders", "ModelNotAvailableError"),
                         ("PIL.Image", "DecompressionBombError")):
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)
