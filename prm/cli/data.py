"""``prm-data``: convert PRM800K, generate arithmetic-world data, validate files, print statistics.

    prm-data convert IN.jsonl OUT.jsonl [--neutral positive|negative|drop] [--alternatives]
    prm-data arith OUT.jsonl [--n 1000] [--seed 0] [--samples-per-problem 1] [--problems-only]
    prm-data validate FILE [--format auto|stepwise|prm800k|problems]
    prm-data stats FILE [--format ...] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from prm.data.arith import ARITH_FORMAT, ArithConfig, generate_dataset, generate_problems
from prm.data.errors import DataError, SkipReport
from prm.data.prm800k import PRM800KOptions, looks_like_prm800k, read_prm800k
from prm.data.problems import ProblemRecord, looks_like_problems, read_problems
from prm.data.stats import dataset_stats, format_stats
from prm.data.stepwise import read_stepwise, write_stepwise
from prm.io import write_jsonl
from prm.steps import StepFormat

FORMATS = ("auto", "stepwise", "prm800k", "problems")


def detect_format(path: Path) -> str:
    """Guess a file's format from its first decodable line."""
    if not path.exists():
        raise DataError("file not found", path=path)
    with path.open(encoding="utf-8-sig") as f:  # as read_jsonl reads it: a byte-order mark is dropped
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if looks_like_prm800k(obj):
                return "prm800k"
            if isinstance(obj, dict) and "completions" in obj:
                return "stepwise"
            if looks_like_problems(obj):
                return "problems"
            raise DataError(
                "unrecognised record: expected stepwise (prompt/completions/labels), PRM800K (question/label) "
                "or a problem file (problem/answer); pass --format", path=path, line=lineno)
    raise DataError("no records (empty file)", path=path)


def read_any(path: Path, fmt: str, *, skip_invalid: bool, report: SkipReport,
             prm800k: PRM800KOptions | None = None) -> tuple[str, list[Any]]:
    """Read a file of any supported format; returns the format and its records."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "prm800k":
        return fmt, read_prm800k(path, prm800k or PRM800KOptions(), skip_invalid=skip_invalid, report=report)
    if fmt == "problems":
        return fmt, read_problems(path, skip_invalid=skip_invalid, report=report)
    return fmt, read_stepwise(path, skip_invalid=skip_invalid, report=report)


def _prm800k_options(args: argparse.Namespace) -> PRM800KOptions:
    return PRM800KOptions(neutral=args.neutral, include_alternatives=args.alternatives,
                          drop_quality_control=args.drop_quality_control, drop_screening=args.drop_screening)


def cmd_convert(args: argparse.Namespace) -> int:
    report = SkipReport()
    examples = read_prm800k(args.input, _prm800k_options(args), skip_invalid=args.skip_invalid, report=report)
    n = write_stepwise(args.output, examples)
    print(f"wrote {n} stepwise examples to {args.output}")
    if report.skipped:
        print(report.summary(), file=sys.stderr)
    return 0


def world_config(args: argparse.Namespace) -> ArithConfig:
    """An ArithConfig from the command line's world options (unset ones keep their defaults)."""
    names = {f.name for f in dataclasses.fields(ArithConfig)}
    kw: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "operators" in kw:
        kw["operators"] = tuple(kw["operators"])
    return ArithConfig(**kw)


def cmd_arith(args: argparse.Namespace) -> int:
    cfg = world_config(args)
    fmt = ARITH_FORMAT if args.format == "plain" else StepFormat(style="tagged")
    if args.problems_only:
        problems = generate_problems(args.n, cfg, args.seed)
        records = [ProblemRecord(p.id, p.prompt, str(p.answer), {"difficulty": p.difficulty, "source": "arith"})
                   for p in problems]
        n = write_jsonl(args.output, (r.to_dict() for r in records))
        print(f"wrote {n} problems to {args.output}")
        return 0
    examples = generate_dataset(args.n, cfg, args.seed, samples_per_problem=args.samples_per_problem, fmt=fmt)
    n = write_stepwise(args.output, examples)
    print(f"wrote {n} labelled solutions to {args.output}")
    print(format_stats(dataset_stats(examples)))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    report = SkipReport(keep=args.max_errors)
    try:
        fmt, records = read_any(args.file, args.format, skip_invalid=True, report=report)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.file}: format {fmt}, {len(records)} valid record(s)")
    if fmt != "problems" and records:
        print(format_stats(dataset_stats(records)))
    if report.skipped:
        print(f"{report.skipped} invalid record(s):", file=sys.stderr)
        for e in report.errors:
            print(f"  {e}", file=sys.stderr)
        if report.skipped > len(report.errors):
            print(f"  ... and {report.skipped - len(report.errors)} more", file=sys.stderr)
        return 1
    print("ok")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    report = SkipReport()
    fmt, records = read_any(args.file, args.format, skip_invalid=args.skip_invalid, report=report)
    if fmt == "problems":
        stats: dict[str, Any] = {"records": len(records)}
    else:
        stats = dataset_stats(records)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats) if fmt != "problems"
          else f"problems: {len(records)}")
    if report.skipped:
        print(report.summary(), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prm-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="PRM800K (as released) to stepwise JSONL")
    c.add_argument("input", type=Path)
    c.add_argument("output", type=Path)
    c.add_argument("--neutral", choices=["positive", "negative", "drop"], default="positive",
                   help="label of a 0 rating (drop = unlabelled)")
    c.add_argument("--alternatives", action="store_true", help="also emit every rated non-chosen completion")
    c.add_argument("--drop-quality-control", action="store_true")
    c.add_argument("--drop-screening", action="store_true")
    c.add_argument("--skip-invalid", action="store_true", help="skip bad records and report how many")
    c.set_defaults(func=cmd_convert)

    a = sub.add_parser("arith", help="generate arithmetic-world problems or labelled solutions")
    a.add_argument("output", type=Path)
    a.add_argument("--n", type=int, default=1000, help="number of problems")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--samples-per-problem", type=int, default=1)
    a.add_argument("--problems-only", action="store_true", help="write problems with answers, no solutions")
    a.add_argument("--format", choices=["plain", "tagged"], default="plain")
    for f in dataclasses.fields(ArithConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "operators":
            a.add_argument(flag, nargs="+", default=None)
        elif f.name == "modulus":
            a.add_argument(flag, type=lambda s: None if s.lower() == "none" else int(s), default=None)
        else:
            a.add_argument(flag, type=type(f.default) if f.default is not None else int, default=None)
    a.set_defaults(func=cmd_arith)

    v = sub.add_parser("validate", help="check a file; every problem with file, line and field")
    v.add_argument("file", type=Path)
    v.add_argument("--format", choices=FORMATS, default="auto")
    v.add_argument("--max-errors", type=int, default=1000)
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("stats", help="counts of records, steps and labels")
    s.add_argument("file", type=Path)
    s.add_argument("--format", choices=FORMATS, default="auto")
    s.add_argument("--skip-invalid", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
