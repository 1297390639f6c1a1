"""Generate the Python gRPC code for protos/ into clipsearch/v1/ (one package, one script).

Usage: python scripts/gen_protos.py [--out DIR]   (default: the repo root)
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "protos"


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out / "clipsearch" / "v1"
    (package / "__init__.py").write_text(
        '"""Generated gRPC code for clipsearch.v1: do not edit; run scripts/gen_protos.py."""\n'
    )
    return sorted(p for p in package.iterdir() if p.suffix in {".py", ".pyi"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO)
    files = generate(parser.parse_args().out)
    sys.stdout.write("".join(f"{f}\n" for f in files))


if __name__ == "__main__":
    main()
