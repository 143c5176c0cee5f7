"""``bundle download|info`` and ``labels``: the bundle folder and its class table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from VistaFinetuneLib.bundle import tiny_bundle
from VistaFinetuneLib.bundle.labels import LabelCatalog
from VistaFinetuneLib.bundle.source import SOURCES as BUNDLE_SOURCES


def cmd_labels(args: argparse.Namespace) -> int:
    """List or search the bundle's classes; resolve free-text names to ids; list the free ids."""
    from VistaFinetuneLib.bundle.labels import ResolveError

    bundle = Path(args.bundle_dir) if args.bundle_dir else tiny_bundle.TEMPLATE_DIR
    catalog = LabelCatalog.from_bundle(bundle)
    if args.free:
        print(f"{len(catalog.free_ids())} ids the table leaves free for new structures: {catalog.free_ids_text()}")
        return 0
    if args.resolve:
        results = []
        for text in args.resolve:
            try:
                results.append(catalog.resolve_name(text).to_json())
            except ResolveError as error:
                if not args.json:
                    raise
                results.append(error.to_json())
        if args.json:
            table = {"bundle": str(bundle), "variant": catalog.variant, "table": catalog.source}
            print(json.dumps(table | {"results": results}, indent=2))
            return 0 if all(r["id"] is not None for r in results) else 1
        for result in results:
            print(f"{result['text']!r} -> {result['id']}: {result['name']}")
            if result["note"]:
                print(f"  note: {result['note']}")
        return 0
    query = " ".join(args.query)
    found = catalog.search(query)
    for item in found:
        print(item)
    if not found:
        suggestions = ", ".join(str(c) for c, _ in catalog.suggest(query)) or "none"
        print(f"no class matches {query!r}; similar: {suggestions}", file=sys.stderr)
        return 1
    return 0


def cmd_bundle_download(args: argparse.Namespace) -> int:
    """Download a VISTA3D bundle (pinned version) and record its weights' SHA-256."""
    from VistaFinetuneLib.bundle.source import bundle_info, download_bundle, format_info

    bundle = download_bundle(args.name, Path(args.dir), args.version, log=lambda m: print(m, file=sys.stderr))
    for line in format_info(bundle_info(bundle)):
        print(line)
    print(f"use it with: vista-finetune finetune ... --bundle-dir {bundle}")
    return 0


def cmd_bundle_info(args: argparse.Namespace) -> int:
    """Describe a bundle folder (reads only)."""
    from VistaFinetuneLib.bundle.source import bundle_info, format_info

    info = bundle_info(Path(args.dir))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for line in format_info(info):
            print(line)
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this group's commands, each with its handler."""
    labels = commands.add_parser("labels", help="list, search or resolve the bundle's class names")
    labels.add_argument("query", nargs="*", help="words to search for (none: list all)")
    labels.add_argument("--resolve", action="append", help="resolve a free-text name to one id (repeatable)")
    labels.add_argument("--free", action="store_true", help="the ids a brand-new structure can map to")
    labels.add_argument("--bundle-dir", help="bundle folder (default: the tiny reference bundle's CT table)")
    labels.add_argument("--json", action="store_true", help="with --resolve: results as JSON (exit 1 if any fail)")
    labels.set_defaults(handler=cmd_labels)

    bundle = commands.add_parser("bundle", help="download a VISTA3D bundle or describe a bundle folder")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    download = bundle_commands.add_parser("download", help="download a bundle and checksum its weights")
    download.add_argument("--name", required=True, choices=list(BUNDLE_SOURCES))
    download.add_argument("--version", help="bundle version (vista3d) or Hugging Face revision (default: pinned)")
    download.add_argument("--dir", required=True, help="parent folder; the bundle goes to DIR/NAME")
    download.set_defaults(handler=cmd_bundle_download)
    info = bundle_commands.add_parser("info", help="describe a bundle folder: configs, weights, labels, monai")
    info.add_argument("dir", help="the bundle folder")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(handler=cmd_bundle_info)
