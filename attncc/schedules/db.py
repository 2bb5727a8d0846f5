"""The tuning database: one JSON object per line, appended atomically.

A record says: for this key

    (variant fingerprint, shape bucket, dtype, target, device name)

this config ran in ``time_s`` seconds (the median of ``runs`` timed calls, with
``spread`` = interquartile range / median), measured by attncc ``attncc`` on
``date``.  Failed candidates are recorded too (``status`` "build-failed",
"run-failed" or "timeout", with ``error``) so that a later session can see them;
:meth:`TuningDB.best` ignores them.

Appends are atomic: the whole line (newline included) goes out in one
``os.write`` on a file descriptor opened with ``O_APPEND``, under an exclusive
``fcntl.flock``; if a writer died halfway through a line, the next writer first
ends that torn line with a newline so that the damage stays on one line.  Two
tuners writing the same file at once lose nothing.

Reading never fails on a damaged file: a truncated or corrupt line is skipped
with a :class:`TuningDBWarning` naming the file and line.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional

try:  # pragma: no cover - not on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT_VERSION = 1
OK = "ok"
FAILED_STATUSES = ("build-failed", "run-failed", "timeout")


class TuningDBWarning(UserWarning):
    """A tuning database line was skipped (truncated, not JSON, or missing fields)."""


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class TuningKey:
    fingerprint: str      # of the variant's unfused IR (see variant_fingerprint)
    bucket: str           # shape bucket (see shape_bucket)
    dtype: str
    target: str
    device: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def short(self) -> str:
        return f"{self.target} {self.dtype} {self.bucket} on {self.device}"


def variant_fingerprint(func) -> str:
    """sha256 (16 hex digits) of the variant's unfused IR as text, without the
    variant's default dimension values (they do not change the kernel)."""
    import copy

    from attncc.ir.printer import print_ir

    f = copy.copy(func)
    f.attrs = {k: v for k, v in dict(func.attrs).items() if k != "defaults"}
    return hashlib.sha256(print_ir(f).encode()).hexdigest()[:16]


def _pow2_ceil(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def shape_bucket(spec) -> str:
    """The shape class a record applies to: batch, heads and head dims exactly, the
    query and key lengths rounded up to a power of two (S=3000 uses S<=4096's record),
    and the quantization if any."""
    text = (f"B={spec.batch},Hq={spec.q_heads},Hkv={spec.kv_heads},"
            f"S<={_pow2_ceil(spec.q_len)},T<={_pow2_ceil(spec.kv_len)},"
            f"D={spec.head_dim},Dv={spec.head_dim_v}")
    if getattr(spec, "quant_dtype", None):          # a quantized kernel is another kernel
        text += f",quant={spec.quant_dtype}" + ("+pv" if spec.quant_pv else "")
    return text


def make_key(func, spec, target: str, device: str) -> TuningKey:
    return TuningKey(variant_fingerprint(func), shape_bucket(spec), spec.dtype, target, device)


# --------------------------------------------------------------------------- records


@dataclass
class Record:
    key: TuningKey
    config: dict
    time_s: Optional[float]             # median seconds per call; None when the candidate failed
    spread: Optional[float] = None      # (p75 - p25) / median of the timed calls
    runs: int = 0                       # timed calls behind the median
    status: str = OK
    error: Optional[str] = None
    attncc: str = ""                    # attncc version that measured it
    date: str = ""                      # ISO 8601, UTC
    extra: dict = field(default_factory=dict)   # variant, shape, build_s, phase, session, arch, ...

    @property
    def ok(self) -> bool:
        return self.status == OK and self.time_s is not None

    def config_id(self) -> str:
        return json.dumps(self.config, sort_keys=True)

    def to_json(self) -> str:
        d = {"v": FORMAT_VERSION, **self.key.as_dict(), "config": self.config, "time_s": self.time_s,
             "spread": self.spread, "runs": self.runs, "status": self.status, "error": self.error,
             "attncc": self.attncc, "date": self.date}
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return json.dumps(d, sort_keys=False, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str) -> "Record":
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in ("fingerprint", "bucket", "dtype", "target", "device", "config", "time_s")
                   if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        if not isinstance(d["config"], dict):
            raise ValueError("config is not an object")
        t = d["time_s"]
        if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0):
            raise ValueError(f"bad time_s {t!r}")
        key = TuningKey(*(str(d.pop(k)) for k in ("fingerprint", "bucket", "dtype", "target", "device")))
        d.pop("v", None)
        known = {f.name for f in dataclasses.fields(cls)} - {"key", "extra"}
        fields = {k: d.pop(k) for k in list(d) if k in known}
        status = fields.get("status") or OK
        fields["status"] = status
        if status == OK and t is None:
            raise ValueError("status ok without a time")
        return cls(key=key, extra=d, **fields)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def record_for(key: TuningKey, config: dict, time_s: Optional[float], **kw) -> Record:
    from attncc import __version__

    extra = kw.pop("extra", {})
    return Record(key=key, config=dict(config), time_s=time_s, attncc=__version__, date=now_iso(),
                  extra=dict(extra), **kw)


# --------------------------------------------------------------------------- the file


class TuningDB:
    """A JSON-lines tuning database at ``path`` (created on the first append)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        self._cache = None          # (mtime_ns, size, records)

    def __repr__(self) -> str:
        return f"TuningDB({self.path!r})"

    # ---- writing
    def append(self, record: Record) -> None:
        self.append_many([record])

    def append_many(self, records: Iterable[Record]) -> None:
        data = "".join(r.to_json() + "\n" for r in records).encode()
        if not data:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data          # isolate a line torn by a writer that died
                view = memoryview(data)
                while view:                      # one write for a regular file; loop for safety
                    n = os.write(fd, view)
                    view = view[n:]
            finally:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ---- reading
    def records(self, key: Optional[TuningKey] = None) -> list[Record]:
        """Every readable record (of ``key``), in file order; damaged lines are skipped
        with a warning."""
        recs = self._read()
        return [r for r in recs if key is None or r.key == key]

    def _read(self) -> list[Record]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        with open(self.path, "rb") as f:
            if fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                except OSError:  # pragma: no cover - read-only file systems without locks
                    pass
            raw = f.read()
        out = []
        lines = raw.split(b"\n")
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(Record.from_json(line.decode("utf-8")))
            except (ValueError, UnicodeDecodeError, TypeError) as exc:
                what = "truncated" if lineno == len(lines) and not raw.endswith(b"\n") else "damaged"
                warnings.warn(f"{self.path}:{lineno}: skipping a {what} tuning record ({_short(exc)})",
                              TuningDBWarning, stacklevel=3)
        self._cache = (stamp, out)
        return out

    def keys(self) -> list[TuningKey]:
        seen: dict = {}
        for r in self._read():
            seen.setdefault(r.key, None)
        return list(seen)

    def best(self, key: TuningKey, version: Optional[str] = None) -> Optional[Record]:
        """The best measured config of ``key``: configs are ranked by the median of their
        records' times (a config measured several times is judged by all its
        measurements, not its luckiest one); the record returned is that config's median
        record.  Records of the running attncc version are preferred when there are any
        (an older kernel's timings may not hold)."""
        return best_of(self.records(key), version)

    def ranked(self, key: TuningKey, version: Optional[str] = None) -> list:
        """Every measured config of ``key`` as its median record, fastest first (the
        ranking ``best`` takes the first of)."""
        return ranked(self.records(key), version)

    def best_records(self) -> list[Record]:
        """The best record of every key in the file."""
        by_key: dict = {}
        for r in self._read():
            by_key.setdefault(r.key, []).append(r)
        out = []
        for recs in by_key.values():
            b = best_of(recs)
            if b is not None:
                out.append(b)
        return out


def best_of(records: list, version: Optional[str] = None) -> Optional[Record]:
    r = ranked(records, version)
    return r[0] if r else None


def ranked(records: list, version: Optional[str] = None) -> list:
    from attncc import __version__

    version = version or __version__
    ok = [r for r in records if r.ok]
    current = [r for r in ok if r.attncc == version]
    pool = current or ok
    if not pool:
        return []
    by_config: dict = {}
    for r in pool:
        by_config.setdefault(r.config_id(), []).append(r)

    def median_record(rs):
        rs = sorted(rs, key=lambda r: r.time_s)
        return rs[(len(rs) - 1) // 2]

    return sorted((median_record(rs) for rs in by_config.values()), key=lambda r: r.time_s)


def config_medians(records: list) -> dict:
    """{config id: median time} over the ok records."""
    by: dict = {}
    for r in records:
        if r.ok:
            by.setdefault(r.config_id(), []).append(r.time_s)
    return {k: statistics.median_low(v) for k, v in by.items()}


def ingest(results_path: str, db) -> dict:
    """Append the records of a results file (``measure_candidates`` writes one on the GPU
    machine) to ``db`` (a path or TuningDB): damaged lines are skipped with a
    TuningDBWarning, records already in ``db`` are not appended twice.  Returns
    {"added", "duplicates", "keys": {TuningKey: {"ok", "failed", "best", "default_s"}}}."""
    if not os.path.exists(results_path):
        from attncc.errors import AttnccError

        raise AttnccError(f"no results file {results_path}")
    tdb = db if isinstance(db, TuningDB) else TuningDB(db)
    incoming = TuningDB(results_path).records()
    have = {r.to_json() for r in tdb.records()}
    new, dup = [], 0
    for r in incoming:
        text = r.to_json()
        if text in have:
            dup += 1
            continue
        have.add(text)
        new.append(r)
    tdb.append_many(new)
    keys: dict = {}
    for r in incoming:
        keys.setdefault(r.key, []).append(r)
    out = {}
    for key, recs in keys.items():
        configs = {r.config_id() for r in recs}
        ok_configs = {r.config_id() for r in recs if r.ok}
        dflt = [r.time_s for r in recs if r.ok and r.extra.get("default")]
        out[key] = {"ok": len(ok_configs), "failed": len(configs - ok_configs), "best": best_of(recs),
                    "default_s": statistics.median(dflt) if dflt else None}
    return {"added": len(new), "duplicates": dup, "keys": out, "db": tdb.path}


def plain_warnings() -> None:
    """Show TuningDBWarnings as one 'attncc: warning: ...' line on stderr (for the CLI);
    other warnings keep Python's format."""
    import sys

    original = warnings.showwarning
    if getattr(original, "_attncc", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, TuningDBWarning):
            print(f"attncc: warning: {message}", file=file or sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    show._attncc = True
    warnings.showwarning = show


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[0] if text else type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."
