"""The benchmark's command (`scripts/benchmark.py` is this): run the sections `--sections` names, each the module of
the same name, writing the report (JSON and the markdown table) after every section, so that a long run that dies
keeps what it measured; or merge earlier reports (`--combine`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks import common
from benchmarks.options import SECTIONS, parse_args
from benchmarks.report import TARGETS, combine, markdown
from benchmarks.sections import MODULES


def main(argv=None, description: str | None = None) -> dict:
    """Parse `argv` and run the sections it names; returns the report."""
    args = parse_args(argv, description or __doc__)
    if args.combine:
        report = combine(args.combine, args.output_dir)
        print((Path(args.output_dir) / "benchmark.md").read_text())
        return report
    device = common.pick_device(args.device)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    report = {"machine": common.machine_description(device, args.precision), "device": device.type,
              "command": "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "targets": TARGETS, "results": {}}
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    for section in sections:
        start = time.perf_counter()
        print(f"[benchmark] {section} ...", flush=True)
        report["results"][section] = MODULES[section].bench(args, device)
        report["results"][section]["section_wall_s"] = time.perf_counter() - start
        (output / "benchmark.json").write_text(json.dumps(report, indent=2))
        (output / "benchmark.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
