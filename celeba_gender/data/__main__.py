"""Check a data copy without training: ``python -m celeba_gender.data ROOT [--split identity]``.

ROOT is a CelebA copy, a folder with one subfolder per class (female/, male/) or a CSV file of
path,label[,identity] (``--source``, ``--class-names``, ``--csv-columns``: data.* in conf/).

Prints the same report a training run writes as data_summary.json.

``python -m celeba_gender.data cache [ROOT] [--list | --clear [--all]]`` shows the caches
(kind, resolution, images, size, the image folders that used them, last use; ROOT's marked)
and removes those of ROOT's copy, or all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from celeba_gender.data.annotations import detect_layout
from celeba_gender.data.balance import BALANCE_METHODS
from celeba_gender.data.cache import (
    CACHE_ENV,
    belongs_to,
    cache_inventory,
    cache_root,
    human_bytes,
    remove_cache_entry,
)
from celeba_gender.data.datamodule import PARTS_NEEDED, CelebADataModule
from celeba_gender.data.errors import DataError
from celeba_gender.data.sources import DEFAULT_CLASS_NAMES, SOURCES
from celeba_gender.data.splits import SPLIT_METHODS

LISTED_NAMES = 10  # long lists (unreadable files, duplicates) are cut here; --json has all


def _named(title: str, items: dict[str, str] | list[str]) -> list[str]:
    entries = list(items.items()) if isinstance(items, dict) else [(name, "") for name in items]
    lines = [f"{title}: {len(entries)}"]
    for name, why in entries[:LISTED_NAMES]:
        lines.append(f"    {name}" + (f"  ({why})" if why else ""))
    if len(entries) > LISTED_NAMES:
        lines.append(f"    ... {len(entries) - LISTED_NAMES} more (see --json)")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """The data report as text for a person."""
    lines = [
        f"root:     {summary['root']} (layout: {summary['layout']})",
        f"images:   {summary['images_listed']} listed, {summary['images_present']} present, "
        f"{summary['images_usable']} usable; {summary['listed_but_absent']} listed but absent",
        *_named("duplicates dropped", summary["duplicates"]),
        *_named("same image labelled both ways, left out", summary.get("conflicting_labels", {})),
        *(
            _named("listed but absent", summary["absent_files"])
            if summary.get("absent_files")
            else []
        ),
        *_named("unreadable files skipped", summary["unreadable"]),
        *_named("files without annotation", summary["unannotated_files"]),
    ]
    warnings = summary.get("annotation_warnings", [])
    if warnings:
        lines.append(f"annotation warnings: {len(warnings)}")
        lines.extend(f"    {warning}" for warning in warnings)
    for path, why in summary["ignored_files"].items():
        lines.append(f"ignored:  {path}: {why}")
    if summary["converted_to_rgb"]:
        lines.append(f"converted to RGB: {summary['converted_to_rgb']}")
    lines.extend(_cache_lines(summary))
    split = summary["split"]
    lines.append(f"split:    {split['method']} (seed {split['seed']})")
    for name, part in summary["parts"].items():
        lines.append(
            f"    {name:5s} {part['images']:7d} images  {part['male']:6d} male  "
            f"{part['female']:6d} female  identities: {part['identities']}"
        )
    lines.append(f"shared identities: {summary['shared_identities']}")
    if summary.get("identity_disjoint") is not None:
        lines.append(f"identity_disjoint: {str(summary['identity_disjoint']).lower()}")
    if summary.get("identity_note"):
        lines.append(f"    {summary['identity_note']}")
    balance = summary["balance"]
    lines.append(
        f"balance:  {balance['method']}: {balance['train_images_per_epoch']} training images per "
        f"epoch, male fraction {balance['male_fraction_before'] or 0:.3f} -> "
        f"{balance['effective_male_fraction'] or 0:.3f}"
    )
    return "\n".join(lines)


def _cache_lines(summary: dict[str, Any]) -> list[str]:
    scan = summary.get("scan", {})
    lines = [
        f"scan:     {scan.get('checked', 0)} files checked, {scan.get('reused_from_cache', 0)} "
        f"reused in {scan.get('seconds', 0):.1f} s; cache {scan.get('cache_file')} "
        f"({human_bytes(scan.get('cache_bytes', 0))})"
    ]
    tensor = summary.get("tensor_cache")
    if tensor:
        how = "built now" if tensor["built_now"] else "reused"
        lines.append(
            f"tensors:  cache {tensor['file']} ({human_bytes(tensor['bytes'])}, {how}, "
            f"{tensor['seconds']:.1f} s)"
        )
    lines.append(
        f"caches:   python -m celeba_gender.data cache {summary['root']} --list (or --clear)"
    )
    return lines


def _cache_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m celeba_gender.data cache",
        description="List or remove the scan and decoded-image caches.",
    )
    parser.add_argument("root", nargs="?", help="a CelebA folder: its copy's caches are marked")
    parser.add_argument("--list", action="store_true", help="list the caches (the default)")
    parser.add_argument("--clear", action="store_true", help="remove ROOT's caches")
    parser.add_argument("--all", action="store_true", help="with --clear: remove every cache")
    parser.add_argument("--cache-dir", default=None, help=f"cache root (default: ${CACHE_ENV})")
    args = parser.parse_args(argv)
    if args.clear and not (args.root or args.all):
        parser.error("--clear needs a ROOT (its copy's caches) or --all")
    if args.all and not args.clear:
        parser.error("--all goes with --clear")
    try:
        image_dir = detect_layout(args.root).image_dir if args.root else None
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = cache_root(args.cache_dir)
    entries = cache_inventory(args.cache_dir)
    if args.clear:
        chosen = [e for e in entries if args.all or belongs_to(e, image_dir, args.cache_dir)]
        removed = [e for e in chosen if remove_cache_entry(e)]
        for entry in removed:
            print(f"removed  {entry.kind:10s} {human_bytes(entry.bytes):>9s}  {entry.path}")
        for entry in chosen:
            if entry not in removed:
                why = "in use or being built by another process"
                print(f"kept     {entry.kind:10s} {entry.path}: {why}")
        freed = sum(entry.bytes for entry in removed)
        print(f"freed {human_bytes(freed)} ({freed} bytes) in {len(removed)} entries under {root}")
        if not args.all:
            print("scan caches are shared by every copy of a folder name and kept (--all too)")
        return 0
    print(f"cache root: {root} (elsewhere: data.cache_dir=... or {CACHE_ENV}=...)")
    print(f"  {'kind':10s} {'size':>9s} {'resolution':>10s} {'images':>7s}  last used / used by")
    for entry in entries:
        mark = "*" if image_dir and belongs_to(entry, image_dir, args.cache_dir) else " "
        images = "-" if entry.images is None else entry.images
        print(
            f"{mark} {entry.kind:10s} {human_bytes(entry.bytes):>9s} "
            f"{entry.resolution or '-':>10s} {images:>7}  {entry.last_used}  {entry.path.name}"
        )
        for folder in entry.image_dirs:
            print(f"{'':44s}used by {folder}")
    total = sum(entry.bytes for entry in entries)
    print(f"total: {human_bytes(total)} in {len(entries)} entries")
    if image_dir:
        print(f"* made for or used by the copy in {image_dir.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["cache"]:  # a data folder named cache: ./cache
        return _cache_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m celeba_gender.data", description=__doc__)
    parser.add_argument(
        "root", help="a CelebA folder (official or study layout), a folder of class folders, a CSV"
    )
    parser.add_argument("--source", default="auto", choices=SOURCES)
    parser.add_argument(
        "--class-names",
        default=",".join(DEFAULT_CLASS_NAMES),
        help="label 0,label 1: class folder names and CSV label values (default: female,male)",
    )
    parser.add_argument(
        "--csv-columns",
        default="",
        help="the CSV's column names, e.g. path=file,label=gender (default: path, label, identity)",
    )
    parser.add_argument("--split", default="identity", choices=SPLIT_METHODS)
    parser.add_argument("--seed", type=int, default=42, help="split seed")
    parser.add_argument("--balance", default="none", choices=BALANCE_METHODS)
    parser.add_argument("--cache-dir", default=None, help=f"cache root (default: ${CACHE_ENV})")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    try:
        items = [item for item in args.csv_columns.split(",") if item]
        if any("=" not in item for item in items):
            parser.error(f"--csv-columns {args.csv_columns}: expected key=column,... (path=file)")
        columns = dict(item.split("=", 1) for item in items)
        module = CelebADataModule(
            args.root,
            source=args.source,
            class_names=args.class_names.split(","),
            csv_columns=columns,
            split=args.split,
            split_seed=args.seed,
            balance=args.balance,
            loader="per_sample",
            cache_dir=args.cache_dir,
        )
        summary = module.summary()
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary)
    # A file name that is not UTF-8 is shown escaped (\udcff), not a UnicodeEncodeError.
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    # split=all is for evaluating a trained model (eval.py); every other split, for training.
    stage = "test" if args.split == "all" else "fit"
    try:
        module.check_parts(PARTS_NEEDED[stage])
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
