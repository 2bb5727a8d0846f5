"""What ``attncc tune`` shows: a progress bar with the best time so far (rich), the
session's summary, the best records of a database (``--show``) and a figure
(``--plot``: best-so-far against trial, time against each knob; matplotlib)."""

from __future__ import annotations

import math
from typing import Optional

from attncc.errors import AttnccError
from attncc.schedules.db import TuningDB, TuningKey


def fmt_time(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.3f} ms"
    return f"{s:.2f} s"


def fmt_config(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items())


# --------------------------------------------------------------------------- progress


class RichProgress:
    """An ``on_event`` for :func:`attncc.schedules.tuner.tune`: a rich progress bar on
    stderr (trials done of planned, or seconds of the budget) with the best time so far."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.progress = None
        self.task = None
        self.by_time = False
        self.failed = 0

    def __call__(self, kind: str, result, **info) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        if kind == "start":
            planned, budget = info.get("planned"), info.get("budget_s")
            self.by_time = budget is not None and info.get("trials") is None
            count = TextColumn("{task.completed:.0f}/{task.total:.0f} s") if self.by_time else MofNCompleteColumn()
            self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                     count, TimeElapsedColumn(), TextColumn("{task.fields[best]}"),
                                     console=self.console, transient=False)
            self.progress.start()
            what = f"tune {result.variant} ({result.strategy}, {result.valid} valid configs)"
            self.task = self.progress.add_task(what, total=budget if self.by_time else planned,
                                               best="best -")
        elif kind == "trial" and self.progress is not None:
            t = info["trial"]
            if t.status != "ok":
                self.failed += 1
            best = info.get("best")
            fail = f", {self.failed} failed" if self.failed else ""
            text = f"best {fmt_time(best)}{fail}"
            if t.phase == "confirm":
                self.progress.update(self.task, description=f"confirm {result.variant} (re-measuring the best)",
                                     best=text)
            elif self.by_time:
                self.progress.update(self.task, completed=min(t.elapsed_s, self.progress.tasks[0].total),
                                     best=text)
            else:
                self.progress.update(self.task, advance=1, best=text)
        elif kind == "done" and self.progress is not None:
            self.progress.stop()
            self.progress = None


# --------------------------------------------------------------------------- summary


def summary(result) -> str:
    lines = []
    dims = ",".join(f"{k}={v}" for k, v in result.env.items())
    _, _, quant = result.key.bucket.partition(",quant=")         # a quantized kernel's own key
    lines.append(f"tuned      {result.variant}  {result.key.target}  {result.key.dtype}  {dims}  "
                 + (f"quantized {quant}  " if quant else "") + f"on {result.key.device}")
    rejected = sum(result.rejected.values())
    lines.append(f"space      {result.space_size} configs, {result.valid} valid, {rejected} rejected before "
                 "building" + (":" if rejected else ""))
    for reason, n in result.rejected.most_common():
        lines.append(f"           {n:5d}  {reason}")
    search = [t for t in result.trials if t.phase == "search"]
    confirm = [t for t in result.trials if t.phase == "confirm"]
    failed = [t for t in result.trials if t.status != "ok"]
    how = {"guided": "cost-model-guided (analytic model + learned correction)",
           "exhaustive": "exhaustive (every valid config, most promising first)",
           "random": "random"}.get(result.strategy, result.strategy)
    overlap = ("builds overlapped with timing" if result.overlap else
               "builds not overlapped with timing" + (" (cpu: a build beside a timed kernel would distort it)"
                                                      if result.key.target == "cpu" else ""))
    resumed = f" ({result.resumed} configs measured in earlier sessions not measured again)" if result.resumed else ""
    lines.append(f"search     {how}: {len(search)} trials{resumed}, {len(confirm)} confirmation runs, "
                 f"{len(failed)} failed; {overlap}")
    for t in failed[:5]:
        lines.append(f"           failed {fmt_config(t.config)}: {t.status}: {t.error}")
    if len(failed) > 5:
        lines.append(f"           ... and {len(failed) - 5} more failures (see the database)")
    lines.append(f"stopped    {result.stopped}; wall time {result.wall_s:.1f} s")
    d = result.default_time()
    lines.append(f"default    {fmt_config(result.default_config)}  {fmt_time(d)}")
    b = result.best
    if b is not None:
        spread = f" (IQR {b.spread * 100:.1f}%)" if b.spread is not None else ""
        speed = f"  ({d / b.time_s:.2f}x the default)" if d else ""
        lines.append(f"best       {fmt_config(b.config)}  {fmt_time(b.time_s)}{spread}{speed}")
    else:
        lines.append("best       none: no candidate could be measured")
    lines.append(f"database   {result.db_path} (+{len(result.trials)} records)")
    return "\n".join(lines)


def show(db_path: str, key: Optional[TuningKey] = None, fingerprint: Optional[str] = None) -> str:
    """The best record of every key in the database (of ``key`` / ``fingerprint`` only)."""
    db = TuningDB(db_path)
    recs = db.records()
    if not recs:
        return f"{db.path}: no tuning records"
    best = db.best_records()
    if key is not None:
        best = [r for r in best if r.key == key]
    if fingerprint is not None:
        best = [r for r in best if r.key.fingerprint == fingerprint]
    counts: dict = {}
    for r in recs:
        counts[r.key] = counts.get(r.key, 0) + 1
    head = f"{db.path}: {len(recs)} records, best of {len(best)} key(s)"
    rows = [("variant", "target", "dtype", "shape bucket", "device", "time", "spread", "records", "config",
             "date")]
    for r in sorted(best, key=lambda r: (r.key.target, r.key.device, str(r.extra.get("variant")), r.key.bucket)):
        rows.append((str(r.extra.get("variant", r.key.fingerprint)), r.key.target, r.key.dtype, r.key.bucket,
                     r.key.device, fmt_time(r.time_s),
                     "-" if r.spread is None else f"{r.spread * 100:.1f}%", str(counts.get(r.key, 0)),
                     fmt_config(r.config), r.date[:10]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = [head]
    for row in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


# --------------------------------------------------------------------------- plot


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AttnccError("--plot needs matplotlib, which is not installed: pip install 'attncc[plot]'") from None
    return plt


def _yscale(ax, ys) -> None:
    """Log scale when the times span more than 4x, with plain numbers on the axis."""
    if ys and max(ys) > 4 * min(ys):
        from matplotlib.ticker import LogFormatter, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def plot(result, path: str) -> None:
    """Best-so-far against trial, and time against each knob, into ``path`` (png, svg, pdf)."""
    plt = require_matplotlib()
    import numpy as np

    knobs = [(name, vals) for name, vals in result.knobs if len(vals) > 1]
    n = 1 + len(knobs)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    ax = axes[0][0]
    search = [t for t in result.trials if t.phase == "search"]
    ok = [t for t in search if t.status == "ok"]
    bad = [t for t in search if t.status != "ok"]
    if ok:
        ax.scatter([t.index for t in ok], [t.time_s * 1e3 for t in ok], s=12, alpha=0.5, label="trial")
        bsf = result.best_so_far()
        ax.step([t.index for t in search], [b * 1e3 if math.isfinite(b) else np.nan for b in bsf],
                where="post", color="C1", label="best so far")
        top = max(t.time_s for t in ok) * 1e3
        if bad:
            ax.scatter([t.index for t in bad], [top] * len(bad), marker="x", color="red", label="failed")
        d = result.default_time()
        if d:
            ax.axhline(d * 1e3, color="gray", ls="--", lw=1, label="default")
        _yscale(ax, [t.time_s * 1e3 for t in ok])
    ax.set_xlabel("trial")
    ax.set_ylabel("time (ms)")
    ax.set_title(f"{result.variant} on {result.key.target}: {result.strategy} search")
    ax.legend(fontsize=8)
    rng = np.random.default_rng(0)
    for i, (name, vals) in enumerate(knobs, 1):
        ax = axes[i // cols][i % cols]
        labels = [str(v) for v in vals]
        xs, ys = [], []
        for t in ok:
            v = t.config.get(name)
            if v in vals:
                xs.append(list(vals).index(v) + rng.uniform(-0.15, 0.15))
                ys.append(t.time_s * 1e3)
        ax.scatter(xs, ys, s=10, alpha=0.5)
        meds = []
        for j, v in enumerate(vals):
            ts = [t.time_s * 1e3 for t in ok if t.config.get(name) == v]
            if ts:
                meds.append((j, min(ts)))
        if meds:
            ax.plot([m[0] for m in meds], [m[1] for m in meds], "o-", color="C1", ms=4, label="best")
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels(labels)
        ax.set_xlabel(name)
        ax.set_ylabel("time (ms)")
        _yscale(ax, ys)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

