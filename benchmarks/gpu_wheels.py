"""The wheel set a lent GPU machine needs: check it here, install it there (issue 25).

    python benchmarks/gpu_wheels.py [DIR]     # check DIR (default .whl/) against gpu_wheels.txt

The machine has no package index and gets the working tree (64 MiB at most), so the wheels
that ``benchmarks/gpu_check.py`` needs and it lacks travel in ``.whl/`` (``make gpu-wheels``).
The check, offline and exact: one wheel per pinned requirement and nothing else, at the pinned
version, installable on CPython 3.12 manylinux x86_64; every ``Requires-Dist`` of every wheel
(its markers evaluated for that interpreter) met by a shipped wheel's version, by what the
machine already has (:data:`DEVICE_HAS`) or deliberately left out (:data:`NOT_SHIPPED`); the
total within :data:`LIMIT`. Prints the set and its total; exits 1 naming each problem.

Only the standard library at import: on the GPU machine, :func:`install` runs before
``packaging`` (one of the wheels) is importable; :func:`check` imports it.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = Path(__file__).with_name("gpu_wheels.txt")
WHEELS = ROOT / ".whl"
LIMIT = 60 * 2**20  # bytes: the working tree that travels is 64 MiB in all
PYTHON = (3, 12)

# What the GPU machine has already (issue 25), with the version where it is known: the
# preinstalled list, and what torch 2.11's CUDA-13 wheel requires (PyPI's metadata), which
# comes with it. A tuple: the versions it may have (a requirement must accept each: both ends
# of a range); None: any version (not checked here; the GPU check itself imports them).
DEVICE_HAS: dict[str, str | tuple[str, ...] | None] = {
    "torch": "2.11.0",
    "cupy-cuda13x": "14.2.0",
    "numpy": ("2.0.0", "2.5.99"),  # what cupy-cuda13x 14.2 accepts: >=2.0,<2.6
    **dict.fromkeys(
        "scipy pandas pyarrow rich fsspec psutil pyyaml msgpack cloudpickle click toolz "
        "sortedcontainers jinja2".split()
    ),
    # brought by those: jinja2's markupsafe, pandas' dateutil and tzdata, cupy's and torch's
    # CUDA Python packages (cuda-core imports cuda.bindings), torch's own requirements
    **dict.fromkeys(
        "markupsafe python-dateutil tzdata cuda-pathfinder cuda-bindings filelock sympy "
        "networkx setuptools triton".split()
    ),
}

# Required by a shipped wheel, left out on purpose.
NOT_SHIPPED = {
    "rapids-dask-dependency": "dask-cuda's pin of dask and distributed, which gpu_wheels.txt "
    "pins to the same versions; its import hooks patch nothing in 26.10 and it requires bokeh",
    "bokeh": "the Dask dashboard only: distributed runs without it (and it brings pillow, "
    "contourpy, narwhals, xyzservices: about 15 MB)",
}


def canonical(name: str) -> str:
    """PEP 503 name: ``Pydantic_Core`` → ``pydantic-core``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path = PINS) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of gpu_wheels.txt."""
    out: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;,]+)", line)
        if not m:
            raise ValueError(f"{path}:{n}: expected name==version, got {line!r}")
        name = canonical(m[1])
        if name in out:
            raise ValueError(f"{path}:{n}: {name} pinned twice")
        out[name] = m[2]
    return out


def wheel_files(directory: Path = WHEELS) -> list[Path]:
    return sorted(Path(directory).glob("*.whl"))


def _supported_tags():
    """The tags a wheel may carry to install on CPython 3.12, glibc ≥ 2.28, x86_64."""
    from packaging import tags

    platforms = [f"manylinux_2_{m}_x86_64" for m in range(28, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return {
        *tags.cpython_tags(PYTHON, abis=["cp312"], platforms=platforms),
        *tags.compatible_tags(PYTHON, "cp312", platforms=platforms),
    }


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise ValueError(f"{wheel.name}: {len(names)} METADATA files")
        return z.read(names[0]).decode()


def _requirements(metadata: str) -> list[str]:
    """The Requires-Dist headers (an RFC 822 header block: the description after it is not read)."""
    return email.parser.HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []


def check(directory: Path = WHEELS, path: Path = PINS) -> dict:
    """The wheel set of ``directory`` against the pins of ``path``: ``{"wheels": [{name,
    version, file, bytes}], "total_bytes", "problems": [str], "assumed": [requirement]}``;
    ``assumed`` are requirements met by a :data:`DEVICE_HAS` package of unknown version."""
    from packaging.requirements import Requirement
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    want, problems, assumed = pins(path), [], []
    supported, wheels = _supported_tags(), {}
    for f in wheel_files(directory):
        name, version, _, tags = parse_wheel_filename(f.name)
        if name in wheels:
            problems.append(f"two wheels of {name}: {wheels[name]['file']} and {f.name}")
        if not tags & supported:
            problems.append(f"{f.name}: no tag installable on CPython 3.12 manylinux x86_64")
        wheels[name] = {
            "name": name,
            "version": str(version),
            "file": f.name,
            "path": f,
            "bytes": f.stat().st_size,
        }
    for name, version in want.items():
        if name not in wheels:
            problems.append(f"{name}=={version}: no wheel")
        elif Version(wheels[name]["version"]) != Version(version):
            problems.append(f"{name}: wheel {wheels[name]['version']}, pinned {version}")
    problems += [f"{w['file']}: not in {path.name}" for n, w in wheels.items() if n not in want]

    env = {
        "python_version": "3.12",
        "python_full_version": "3.12.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    for w in wheels.values():
        for text in _requirements(_metadata(w["path"])):
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # another Python, OS, or an extra nobody asks for
            dep = canonical(req.name)
            have = wheels[dep]["version"] if dep in wheels else DEVICE_HAS.get(dep)
            if dep in NOT_SHIPPED and dep not in wheels:
                continue
            if dep not in wheels and dep not in DEVICE_HAS:
                problems.append(f"{w['name']} requires {text}: neither shipped nor on the device")
            elif have is None:
                assumed.append(f"{w['name']}: {text}")
            else:
                for v in (have,) if isinstance(have, str) else have:
                    if not req.specifier.contains(v, prereleases=True):
                        be = "is" if dep in wheels else "may be"
                        problems.append(f"{w['name']} requires {text}, but {dep} {be} {v}")
    total = sum(w["bytes"] for w in wheels.values())
    if total > LIMIT:
        problems.append(f"total {total / 2**20:.1f} MiB exceeds {LIMIT / 2**20:.0f} MiB")
    rows = [{k: v for k, v in w.items() if k != "path"} for w in wheels.values()]
    return {"wheels": rows, "total_bytes": total, "problems": problems, "assumed": assumed}


def _extract(wheel: Path, target: Path) -> None:
    """A wheel's files into ``target`` as ``pip install --target`` lays them (no pip)."""
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            parts = member.split("/")
            if parts[0].endswith(".data"):  # <name>.data/{purelib,platlib}/... go to the root
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue  # scripts, headers: not needed to import
                parts = parts[2:]
            dest = target.joinpath(*parts)
            if member.endswith("/"):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(member))


def install(target: Path, directory: Path = WHEELS, path: Path = PINS) -> str:
    """Install the pinned wheels of ``directory`` into ``target`` (``pip install --no-index
    --no-deps --target``; unpacked by hand where this Python has no pip). Returns how."""
    files = [str(f) for f in wheel_files(directory)]
    names = {canonical(Path(f).name.split("-", 1)[0]) for f in files}
    missing = sorted(set(pins(path)) - names)
    if missing:
        raise SystemExit(
            f"{directory}: no wheel of {', '.join(missing)}: run `make gpu-wheels` "
            "on a machine with PyPI first"
        )
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
        "--target",
        str(target),
        *files,
    ]
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        for f in files:
            _extract(Path(f), target)
        return "unpacked (no pip)"
    subprocess.run(cmd, check=True)
    return "pip install --no-index --no-deps --target"


def main(argv=None) -> int:
    directory = Path((argv if argv is not None else sys.argv[1:] or [str(WHEELS)])[0])
    report = check(directory)
    for w in sorted(report["wheels"], key=lambda w: -w["bytes"]):
        print(f"  {w['name']:<22} {w['version']:<12} {w['bytes'] / 2**20:7.2f} MiB")
    print(
        f"{len(report['wheels'])} wheels, total {report['total_bytes'] / 2**20:.1f} MiB "
        f"(limit {LIMIT / 2**20:.0f} MiB) in {directory}"
    )
    print(
        f"{len(report['assumed'])} requirements met by the device's own packages (version "
        "not checked here); not shipped on purpose: " + ", ".join(NOT_SHIPPED)
    )
    for p in report["problems"]:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
