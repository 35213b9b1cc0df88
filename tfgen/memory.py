"""Available memory: what this process may still use (``MemAvailable``, capped by cgroup
limits and ``ulimit -v``), and the check that refuses data whose float32 copies cannot fit.

The low half of the memory check, apart from the graph-tracing estimate of
:mod:`tfgen.resources` (the high half, which imports the config, the schemes and the
networks): the data loader (:mod:`tfgen.data`) needs only this part, before anything is built.
"""
from __future__ import annotations

import dataclasses
import math
import resource
from pathlib import Path

from tfgen.errors import ResourceError

FLOAT = 4  # bytes of a float32


@dataclasses.dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # where the figure comes from, for the message


def available_memory() -> Available | None:
    """What this process may still use, plus what it holds: ``MemAvailable`` + own RSS, capped
    by the cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) limits above it and by the
    address-space limit (RLIMIT_AS, ``ulimit -v``).  None where /proc/meminfo does not exist
    (the check is then skipped)."""
    available = _meminfo_kib("/proc/meminfo", "MemAvailable")
    if available is None:
        return None
    rss = (_meminfo_kib("/proc/self/status", "VmRSS") or 0) * 1024
    best = Available(available * 1024 + rss, "MemAvailable")
    for limit, usage, where in _cgroup_limits():
        room = limit - usage + rss
        if room < best.bytes:
            best = Available(max(room, 0), f"the cgroup limit {where}")
    space = _address_space()
    if space is not None and space[0] + rss < best.bytes:
        best = Available(max(space[0] + rss, 0), f"the address-space limit, ulimit -v "
                                                 f"{space[1] // 1024}")
    return best


def _address_space() -> tuple[int, int] | None:
    """(bytes of address space this process may still map, the limit): the RLIMIT_AS soft
    limit minus the process's virtual size now (``VmSize``); None without a limit.

    The limit is on address space, not on memory: TensorFlow reserves far more than it
    touches (thread stacks, allocator arenas), and VmSize counts what is reserved already.
    What it reserves later is not in the estimate, so the check can pass a run that the limit
    stops anyway; it refuses only what cannot fit even then."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = _meminfo_kib("/proc/self/status", "VmSize")
    return None if size is None else (soft - size * 1024, soft)


def peak_rss() -> int | None:
    """This process's peak resident memory so far, in bytes (``VmHWM``; None where
    /proc/self/status does not exist)."""
    peak = _meminfo_kib("/proc/self/status", "VmHWM")
    return None if peak is None else peak * 1024


def _meminfo_kib(path: str, key: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limits() -> list[tuple[int, int, str]]:
    """(limit, usage, file) of every memory-limited cgroup this process is in."""
    out = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":  # cgroup v2: walk up to the root, each level may set a limit
            node = Path("/sys/fs/cgroup") / path.lstrip("/")
            for level in [node, *node.parents]:
                if not str(level).startswith("/sys/fs/cgroup"):
                    break
                limit = _read_int(level / "memory.max")
                usage = _read_int(level / "memory.current")
                if limit is not None and usage is not None:
                    out.append((limit, usage, str(level / "memory.max")))
        elif "memory" in controllers.split(","):  # cgroup v1
            node = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit = _read_int(node / "memory.limit_in_bytes")
            usage = _read_int(node / "memory.usage_in_bytes")
            if limit is not None and usage is not None and limit < 2**60:  # 2^63-ish: none
                out.append((limit, usage, str(node / "memory.limit_in_bytes")))
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def check_data_memory(counts: dict[str, int], source_shape: tuple, out_shape: tuple,
                      file: str) -> None:
    """Refuse (ResourceError), before any pixel is converted, splits whose float32 copies do
    not fit: the converted images of every split, plus the float32 copy of one split at its
    source size that the conversion makes first.  Catches e.g. a huge ``data.resize``,
    which would otherwise exhaust memory inside the data loader, before
    :func:`tfgen.resources.check_memory` runs."""
    out_bytes = sum(counts.values()) * math.prod(out_shape) * FLOAT
    source_bytes = max(counts.values(), default=0) * math.prod(source_shape) * FLOAT
    total = out_bytes + source_bytes
    available = available_memory()
    if available is None or total <= available.bytes:
        return
    h, w, c = out_shape
    splits = ", ".join(f"{name} {n}" for name, n in counts.items())
    raise ResourceError(
        f"{file}: the data need about {format_bytes(total)} of memory ({splits} images of "
        f"{h}x{w}x{c} as float32), but {format_bytes(available.bytes)} is available "
        f"({available.source}); lower data.resize or select fewer images (data.train_split, "
        f"data.subsample), or run anyway with --no-memory-check")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"
