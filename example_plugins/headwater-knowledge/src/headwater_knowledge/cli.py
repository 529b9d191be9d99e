"""The ``headwater-knowledge`` command: build the index, run a stand-in search API, write a
server configuration.

``headwater-knowledge index [--db FILE] [--stdlib] [--package NAME]... [FOLDER]...``
    Index folders of Markdown, text and HTML files, the standard library's docstrings
    and installed packages' docstrings (each source replaces its earlier documents).
``headwater-knowledge standin [--port N] [--latency S] [--error-rate R] ...``
    Serve the stand-in web search API until Ctrl-C.
``headwater-knowledge config [--index FILE] [--folder DIR] [--web-url URL] [--port N]``
    Print a ``headwater serve`` configuration offering the query pipeline as
    ``knowledge``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _index(args: argparse.Namespace) -> int:
    from .collect import (
        folder_documents,
        package_documents,
        site_packages_documents,
        stdlib_documents,
    )
    from .index import IndexWriter

    if not (args.folders or args.stdlib or args.package or args.site_packages):
        print(
            "headwater-knowledge: error: nothing to index: give folders, --stdlib, "
            "--site-packages or --package NAME",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    with IndexWriter(args.db) as writer:
        for folder in args.folders:
            if not os.path.isdir(folder):
                print(f"headwater-knowledge: error: no folder {folder!r}", file=sys.stderr)
                return 2
            count = writer.replace_source(os.path.realpath(folder), folder_documents(folder))
            print(f"{folder}: {count} documents")
        if args.stdlib:
            count = writer.replace_source("python:stdlib", stdlib_documents())
            print(f"standard library: {count} documents")
        if args.site_packages:
            count = writer.replace_source("python:site-packages", site_packages_documents())
            print(f"site-packages: {count} documents")
        for name in args.package:
            try:
                count = writer.replace_source(f"python:{name}", package_documents(name))
            except LookupError as exc:
                print(f"headwater-knowledge: error: {exc}", file=sys.stderr)
                return 2
            print(f"package {name}: {count} documents")
        writer.optimize()
        total = writer.count()
    print(f"{args.db}: {total} documents ({time.monotonic() - started:.1f} s)")
    return 0


def _standin(args: argparse.Namespace) -> int:
    from .standin import StandIn

    settings = {
        "latency": args.latency,
        "page_latency": args.page_latency,
        "error_rate": args.error_rate,
        "hang_rate": args.hang_rate,
        "duplicates": args.duplicates,
        "key": args.key,
    }
    with StandIn(port=args.port, **settings) as api:
        print(f"stand-in web search API on {api.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from .pipeline import pipeline, server_config

    try:
        pipe = pipeline(
            index=args.index,
            folder=args.folder,
            web_url=args.web_url,
            web_key="${BRAVE_API_KEY:-}" if args.web_url else None,
        )
    except ValueError as exc:
        print(f"headwater-knowledge: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(server_config(pipe, port=args.port), sort_keys=False))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwater-knowledge", description="Tools of the headwater-knowledge plugin."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    index = sub.add_parser("index", help="build or update the full-text index")
    index.add_argument("folders", nargs="*", help="folders of .md, .txt, .rst, .html files")
    index.add_argument("--db", default="knowledge.db", help="the index file (knowledge.db)")
    index.add_argument(
        "--stdlib", action="store_true", help="index the standard library's docstrings"
    )
    index.add_argument(
        "--site-packages", action="store_true", help="index every installed package's docstrings"
    )
    index.add_argument(
        "--package",
        action="append",
        default=[],
        metavar="NAME",
        help="index an installed package's docstrings (repeatable)",
    )
    index.set_defaults(run=_index)
    standin = sub.add_parser("standin", help="serve a stand-in web search API")
    standin.add_argument("--port", type=int, default=8766)
    standin.add_argument("--latency", type=float, default=0.0, help="seconds per search call")
    standin.add_argument("--page-latency", type=float, default=0.0, help="seconds per page")
    standin.add_argument("--error-rate", type=float, default=0.0, help="share of calls failing")
    standin.add_argument("--hang-rate", type=float, default=0.0, help="share of calls hanging")
    standin.add_argument("--duplicates", action="store_true", help="include duplicate results")
    standin.add_argument("--key", default=None, help="require this API key")
    standin.set_defaults(run=_standin)
    config = sub.add_parser("config", help="print a headwater serve configuration")
    config.add_argument("--index", help="the index file (the fts provider)")
    config.add_argument("--folder", help="a folder to search (the files provider)")
    config.add_argument("--web-url", help="the web search API's base URL (the web provider)")
    config.add_argument("--port", type=int, default=8765)
    config.set_defaults(run=_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
