"""The image's Python requirements (Containerfile): the project's dependencies and those of
one engine variant, from pyproject.toml, without the project's source (so that layer is
rebuilt only when a dependency changes).

    python3 requirements.py cpu                 # requirement lines, one per line
    python3 requirements.py --pip-args cpu      # pip's arguments for the variant
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("cpu", "gpu")


def requirements(variant: str) -> list[str]:
    project = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"][variant])
    if variant == "cpu":
        # The pinned CPU build (constraints.txt); pip finds it through PIP_FIND_LINKS.
        lines.append("torch==2.13.0")
    return lines


def pip_args(variant: str) -> list[str]:
    # constraints.txt pins what the CPU build was tested with. The GPU build takes vllm's own
    # CUDA torch from PyPI, so there only the non-engine pins apply.
    if variant == "cpu":
        return ["-c", str(HERE / "constraints.txt")]
    engine = ("torch", "vllm", "triton", "nvidia-")
    kept = [
        line
        for line in (HERE / "constraints.txt").read_text().splitlines()
        if not line.lower().startswith(engine)
    ]
    (HERE / "constraints-gpu.txt").write_text("\n".join(kept) + "\n")
    return ["-c", str(HERE / "constraints-gpu.txt")]


def main(argv: list[str]) -> None:
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 1 or args[0] not in VARIANTS:
        sys.exit(f"usage: requirements.py [--pip-args] {{{'|'.join(VARIANTS)}}}")
    out = pip_args(args[0]) if "--pip-args" in argv else requirements(args[0])
    print("\n".join(out) if "--pip-args" not in argv else " ".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
