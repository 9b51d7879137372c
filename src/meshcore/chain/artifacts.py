"""The compiled contracts that meshcore ships: ABI and bytecode, committed beside their sources.

`load_artifact` reads the committed JSON (no compiler needed at run time); `compile_artifact`
recompiles a source with the pinned `vyper` so that a test can prove the two still match.
Regenerate the JSON after editing a source with ``python -m meshcore.chain.artifacts``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Final

import attrs

from meshcore.errors import ConfigError

__all__ = [
    "CONTRACTS",
    "VYPER_VERSION",
    "Artifact",
    "compile_artifact",
    "load_artifact",
    "source_text",
]

CONTRACTS: Final = ("RelayRegistry", "EnsRegistry", "PublicResolver")
VYPER_VERSION: Final = "0.4.3"
"""The compiler the committed bytecode was built with (each source pins it by pragma too)."""


@attrs.frozen
class Artifact:
    """One compiled contract: its ABI (JSON list) and deployment bytecode (0x-hex)."""

    name: str
    abi: list[dict[str, Any]] = attrs.field(eq=False, repr=False)
    bytecode: str = attrs.field(repr=False)
    compiler: str
    source_sha256: str

    def as_json(self) -> dict[str, Any]:
        """The committed file's content."""
        return {
            "contract": self.name,
            "compiler": self.compiler,
            "source_sha256": self.source_sha256,
            "abi": self.abi,
            "bytecode": self.bytecode,
        }


def _check_name(name: str) -> None:
    if name not in CONTRACTS:
        raise ValueError(f"unknown contract {name!r}; meshcore ships {', '.join(CONTRACTS)}")


def source_text(name: str) -> str:
    """The Vyper source of contract `name`."""
    _check_name(name)
    return resources.files(__package__).joinpath(f"{name}.vy").read_text("utf-8")


@functools.cache
def load_artifact(name: str) -> Artifact:
    """The committed ABI and bytecode of contract `name` (read once, then cached)."""
    _check_name(name)
    data = json.loads(resources.files(__package__).joinpath(f"{name}.json").read_text("utf-8"))
    return Artifact(
        name=data["contract"],
        abi=data["abi"],
        bytecode=data["bytecode"],
        compiler=data["compiler"],
        source_sha256=data["source_sha256"],
    )


def compile_artifact(name: str) -> Artifact:
    """Compile contract `name` from its source with the installed `vyper`.

    Raises:
        ConfigError: vyper is not installed, or is not the pinned version.
    """
    try:
        import vyper
    except ImportError:
        raise ConfigError(
            f"compiling the contracts needs vyper {VYPER_VERSION}: "
            f"pip install 'vyper=={VYPER_VERSION}' (or pip install -e '.[test]')"
        ) from None
    if vyper.__version__ != VYPER_VERSION:
        raise ConfigError(
            f"the contracts are built with vyper {VYPER_VERSION}, but vyper "
            f"{vyper.__version__} is installed: pip install 'vyper=={VYPER_VERSION}'"
        )
    source = source_text(name)
    out = vyper.compile_code(source, output_formats=["abi", "bytecode"])
    return Artifact(
        name=name,
        abi=out["abi"],
        bytecode=out["bytecode"],
        compiler=f"vyper {vyper.__version__}",
        source_sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(),
    )


def main() -> int:
    """Recompile every contract and rewrite its JSON beside the source."""
    here = Path(__file__).resolve().parent
    for name in CONTRACTS:
        artifact = compile_artifact(name)
        target = here / f"{name}.json"
        target.write_text(json.dumps(artifact.as_json(), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {target} ({len(artifact.bytecode) // 2 - 1} bytes of bytecode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
