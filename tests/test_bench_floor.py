"""benchmarks/gpu/floor.py: the 64 x 32 kernel's tile-work floor against the issue-4 budget."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _floor():
    spec = importlib.util.spec_from_file_location("gpu_floor", os.path.join(ROOT, "benchmarks", "gpu", "floor.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(label, cfg, mask, ms, density=1.0, density128=1.0):
    return {"label": label, "cfg": cfg, "mask": mask, "density": density, "density128": density128,
            "attncc_s": ms * 1e-3}


def _write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text(json.dumps({"device": "x", "results": [{"id": r["label"], "sparse_rows": [r]} for r in rows]}))
    return str(p)


def test_floor_against_budget(tmp_path, capsys):
    floor = _floor()
    a = _write(tmp_path, "a.json", [
        _row("dense", "128x128 s2", "full", 4.0), _row("dense", "64x32 s2", "full", 5.0),
        _row("documents=1", "64x32 s2", "document", 6.0),
        _row("window=256", "64x32 s2", "window", 0.2, density=0.02, density128=0.025),
        _row("documents=64", "128x128|64x32", "document", 0.3, density=0.03, density128=0.04)])
    # a second pass: the fastest time of each row counts
    b = _write(tmp_path, "b.json", [_row("dense", "128x128 s2", "full", 3.0),
                                    _row("documents=64", "128x128|64x32", "document", 0.25, 0.03, 0.04)])
    (dense, small, small_table), rows = floor.table(floor.load([a, b]))
    assert (dense, small, small_table) == pytest.approx((3.0, 5.0, 6.0))
    by = {r[0]: r for r in rows}
    assert set(by) == {"window=256", "documents=64"}
    # a band floors on the unmasked 64 x 32 rate, a tile map on the table-mode one
    _, _, _, budget, fl, ms = by["window=256"]
    assert budget == pytest.approx(1.2 * 0.025 * 3.0) and fl == pytest.approx(0.02 * 5.0) and ms == pytest.approx(0.2)
    _, _, _, budget, fl, ms = by["documents=64"]
    assert budget == pytest.approx(1.2 * 0.04 * 3.0) and fl == pytest.approx(0.03 * 6.0) and ms == pytest.approx(0.25)
    assert floor.main([a, b]) == 0
    assert "documents=64" in capsys.readouterr().out


def test_floor_names_what_is_missing(tmp_path):
    floor = _floor()
    a = _write(tmp_path, "a.json", [_row("dense", "128x128 s2", "full", 4.0)])
    with pytest.raises(SystemExit, match="no 'dense' run at 64x32"):
        floor.main([a])
    bad = tmp_path / "bad.json"
    bad.write_text("SPARSE not json")
    with pytest.raises(SystemExit, match="not a JSON of attention.py"):
        floor.main([str(bad)])
