"""The build hook: gRPC stubs generated from the repository's protos at build time.

The protos in the repository's ``proto/`` are the one definition of Arbiter's wire, so the
client's stubs are generated from them whenever the package is built and never committed:
they cannot drift from what the Rust servers speak. ``build_py`` runs ``grpc_tools.protoc``
(``--python_out --grpc_python_out --pyi_out``) into the build directory, so every wheel,
whether built by ``pip install ./clients/python`` or by ``python -m build``, carries them.
An sdist carries a copy of the protos (``proto/`` beside this file) so that a wheel built
from it elsewhere can generate them too.

The protos' packages (``arbiter.supervisor.v1`` and so on) become subpackages of the
``arbiter`` package, which is where protoc's generated imports expect them.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

HERE = Path(__file__).resolve().parent
# A file every proto tree of Arbiter has: how a candidate directory is recognized.
MARKER = Path("arbiter/supervisor/v1/supervisor.proto")


def proto_root() -> Path:
    """Where the protos are: $ARBITER_PROTO_DIR, else the repository's proto/ two levels up
    (a checkout), else proto/ beside this file (an sdist). Fails saying where it looked."""
    override = os.environ.get("ARBITER_PROTO_DIR")
    if override:
        candidates = [Path(override)]
    else:
        candidates = [HERE.parent.parent / "proto", HERE / "proto"]
    for candidate in candidates:
        if (candidate / MARKER).is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise SystemExit(
        f"arbiter-client: cannot find Arbiter's protos (looked for {MARKER} in {looked}). "
        "Build the package from the repository (pip install ./clients/python) or from its "
        "sdist, or set ARBITER_PROTO_DIR to the repository's proto/ directory."
    )


def generate(out: Path) -> list[Path]:
    """Runs protoc on every Arbiter proto under the proto root into `out`; returns the files written
    (with an __init__.py in every package directory protoc wrote to)."""
    from importlib.resources import files

    from grpc_tools import protoc

    root = proto_root()
    # Arbiter's own protos only: the kubelet's (proto/kubelet) are the supervisor's business.
    protos = sorted(str(p.relative_to(root)) for p in (root / "arbiter").rglob("*.proto"))
    well_known = str(files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"arbiter-client: protoc failed on {', '.join(protos)} in {root}")
    written = []
    for proto in protos:
        directory = out / Path(proto).parent
        stem = Path(proto).stem
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(directory / f"{stem}{suffix}")
        # Every directory from the proto's package down to (not including) `arbiter`,
        # which is the hand-written package.
        package = directory
        while package != out / "arbiter":
            init = package / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated from the proto package of the same name."""\n')
            written.append(init)
            package = package.parent
    return sorted(set(written))


class build_py(_build_py):
    """The hand-written package, plus the stubs generated into the build directory. For an
    editable install (``pip install -e``), which imports the package from src/, they are
    generated into src/ as well (git ignores them there): reinstall after a proto changes."""

    def run(self) -> None:
        super().run()
        self._generated = generate(Path(self.build_lib))
        if getattr(self, "editable_mode", False):
            generate(HERE / "src")
        print(f"arbiter-client: generated {len(self._generated)} files from {proto_root()}")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [str(p) for p in getattr(self, "_generated", [])]


class sdist(_sdist):
    """An sdist that carries the protos, so a wheel can be built from it away from the repo."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / "proto"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(proto_root(), target)


def runtime_requirements() -> list[str]:
    """grpcio at least the grpcio-tools that generated the stubs (its _pb2_grpc modules
    refuse an older one), and the protobuf range that grpcio-tools itself requires (its
    _pb2 modules refuse an older runtime)."""
    tools = importlib.metadata.version("grpcio-tools")
    protobuf = next(
        (
            r.split(";")[0].strip()
            for r in importlib.metadata.requires("grpcio-tools") or []
            if r.replace(" ", "").startswith("protobuf")
        ),
        "protobuf",
    )
    return [f"grpcio>={tools}", protobuf]


try:
    requirements = runtime_requirements()
except importlib.metadata.PackageNotFoundError:
    sys.exit("arbiter-client: building needs grpcio-tools (pyproject.toml's build requirement)")

setup(
    install_requires=requirements,
    cmdclass={"build_py": build_py, "sdist": sdist},
)
