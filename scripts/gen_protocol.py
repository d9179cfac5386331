#!/usr/bin/env python3
"""Generate the Python gRPC modules from fractal_app/protocol/golem_task_api.proto.

    python scripts/gen_protocol.py           # write the modules into fractal_app/protocol/
    python scripts/gen_protocol.py --check   # exit 1 if the committed modules are stale

The generated modules are committed, so the app needs no grpcio-tools at run time; the
``--check`` mode (and tests/test_protocol.py) keeps them in step with the .proto.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_DIR = REPO_ROOT / "fractal_app" / "protocol"
PROTO_NAME = "golem_task_api.proto"
PROTO_STEM = PROTO_NAME.removesuffix(".proto")
GENERATED_NAMES = (f"{PROTO_STEM}_pb2.py", f"{PROTO_STEM}_pb2_grpc.py", f"{PROTO_STEM}_pb2.pyi")

# protoc writes `import golem_task_api_pb2 as ...`, which only works with the protocol folder
# on sys.path; the app imports it as part of the fractal_app.protocol package.
_BARE_IMPORT = re.compile(rf"^import {PROTO_STEM}_pb2 as ", re.MULTILINE)
_PACKAGE_IMPORT = f"from fractal_app.protocol import {PROTO_STEM}_pb2 as "


def generate(out_dir: Path) -> list[Path]:
    """Run grpc_tools.protoc on the .proto, writing the three modules into ``out_dir``."""
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTOCOL_DIR}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        str(PROTOCOL_DIR / PROTO_NAME),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(
            f"protoc failed (exit {completed.returncode}):\n{completed.stderr}\n"
            "Is grpcio-tools installed? pip install -e '.[dev]'"
        )
    grpc_module = out_dir / f"{PROTO_STEM}_pb2_grpc.py"
    source = grpc_module.read_text()
    fixed, count = _BARE_IMPORT.subn(_PACKAGE_IMPORT, source)
    if count != 1:
        raise SystemExit(
            f"expected one `import {PROTO_STEM}_pb2 as` line in {grpc_module.name}, found {count}:"
            " has the grpcio-tools output format changed?"
        )
    grpc_module.write_text(fixed)
    return [out_dir / name for name in GENERATED_NAMES]


def stale_files(committed_dir: Path = PROTOCOL_DIR) -> list[str]:
    """Regenerate into a temporary folder; return a unified diff per file that differs."""
    diffs = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate(Path(tmp)):
            committed = committed_dir / fresh.name
            old = committed.read_text() if committed.exists() else ""
            new = fresh.read_text()
            if old != new:
                diff = difflib.unified_diff(
                    old.splitlines(keepends=True),
                    new.splitlines(keepends=True),
                    fromfile=f"committed/{fresh.name}",
                    tofile=f"regenerated/{fresh.name}",
                )
                diffs.append("".join(diff) or f"{fresh.name}: missing")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary folder and fail if the committed modules differ",
    )
    args = parser.parse_args(argv)
    if args.check:
        diffs = stale_files()
        if diffs:
            sys.stderr.write("".join(diffs))
            sys.stderr.write(
                "\nThe generated protocol modules are stale: run python scripts/gen_protocol.py\n"
            )
            return 1
        print("generated protocol modules are up to date")
        return 0
    for path in generate(PROTOCOL_DIR):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
