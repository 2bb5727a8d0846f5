"""Bad input gives ONE clear AttnccError message and exit code 2 from the CLI, with no
traceback (DESIGN.md: a TVM traceback never reaches a user).  The bad variant files
live in tests/data/."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import DATA, EXAMPLES, REPO
from attncc.errors import AttnccError
from attncc.compiler import compile_variant


def attncc(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    return subprocess.run([sys.executable, "-m", "attncc", *args], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one 'attncc: error:' line on stderr containing every word, no traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{out}"
    assert "Traceback" not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    msg = lines[0]
    assert msg.startswith("attncc: error: "), msg
    for w in words:
        assert w in msg, f"expected {w!r} in: {msg}"
    return msg


def data(name: str) -> str:
    return str((DATA / name).relative_to(REPO))


SMALL = data("small_sdpa.py")

# name -> (argv after `attncc compile`, words the message must contain)
COMPILE_ERRORS = {
    "syntax error": ([data("syntax_error.py")], ["syntax_error.py:7", "syntax error"]),
    "wrong rank": ([data("wrong_rank.py")],
                   ["variant 'wrong_rank'", "line 8", "q must have rank 4", "tensor<[B, S, D] f32>"]),
    "head dims differ": ([data("head_dim_mismatch.py")],
                         ["variant 'head_dim_mismatch'", "line 8", "head dims of q and k differ: D vs E"]),
    "unknown target": ([SMALL, "--target", "nosuch"], ["unknown target 'nosuch'", "cpu"]),
    "fp8 on cpu": ([SMALL, "--dtype", "f8e4m3"], ["f8e4m3 is not supported", "f32"]),
    "nonsense dtype": ([SMALL, "--dtype", "nonsense"], ["unknown dtype 'nonsense'"]),
    "scores only": ([data("scores_only.py")],
                    ["variant 'scores_only'", "fuse-attention", "no softmax found", "not attention"]),
    "probabilities returned": ([data("probs_returned.py")],
                               ["variant 'probs_returned'", "op attn.softmax", "line 8",
                                "probabilities are used by more than one op"]),
    "no dimension values": ([data("no_defaults.py")],
                            ["no value for dimension(s) B, H, S, D", "--shape"]),
    "one dimension missing": ([data("no_defaults.py"), "--shape", "B=1,H=2,S=8"],
                              ["no value for dimension(s) D:", "D=..."]),
    "unknown shape name": ([SMALL, "--shape", "Q=4"],
                           ["--shape names Q", "not a dimension", "B, H, S, D"]),
    "shape not NAME=VALUE": ([SMALL, "--shape", "S"], ["bad --shape 'S'", "NAME=VALUE"]),
    "shape not a positive int": ([SMALL, "--shape", "S=0"], ["dimension S must be a positive integer"]),
    "shape not a number": ([SMALL, "--shape", "S=lots"], ["dimension S must be a positive integer", "lots"]),
    "unknown config knob": ([SMALL, "--config", "bogus=3"], ["no knob 'bogus'", "block_q"]),
    "config knob not an int": ([SMALL, "--config", "block_q=big"], ["block_q", "big"]),
    "config knob negative": ([SMALL, "--config", "block_k=-64"], ["block_k", "-64"]),
    "no such file": ([data("does_not_exist.py")], ["no such file", "does_not_exist.py"]),
    "no such variant": ([SMALL, "--variant", "nope"], ["no variant 'nope'", "small_sdpa"]),
    "unknown pass": ([SMALL, "--passes", "canonicalize,bogus"], ["unknown pass 'bogus'"]),
    "pipeline without fusion": ([SMALL, "--passes", "canonicalize"], ["expected exactly one attn.flash"]),
    "pipeline without tiling": ([SMALL, "--passes", "canonicalize,fuse-attention"],
                                ["not tiled", "tile-online-softmax"]),
}


@pytest.mark.parametrize("name", list(COMPILE_ERRORS))
def test_compile_user_error(name):
    argv, words = COMPILE_ERRORS[name]
    assert_user_error(attncc("compile", *argv, "--no-run"), *words)


def test_control_case_compiles():
    """The control variant beside the bad ones is fine (so the errors above are about the input)."""
    proc = attncc("compile", SMALL, "--emit", "ir")
    assert proc.returncode == 0, proc.stderr
    assert "attn.flash" in proc.stdout


OPT_ERRORS = {
    "parse error": (["-"], "attn.func @f(%x: tensor<[S] f32>) -> (tensor<[S] f32>) {\n"
                    "  %a = attn.exp %y : tensor<[S] f32>\n  attn.return %a\n}\n", ["-:2:", "undefined value '%y'"]),
    "no such file": ([data("does_not_exist.attn")], None, ["no such file"]),
    "variant error through opt": ([data("wrong_rank.py")], None, ["rank 4"]),
    "refusal": ([data("probs_returned.py"), "--pass", "fuse-attention"], None,
                ["line 8", "probabilities are used by more than one op"]),
    "bad pass option": ([SMALL, "--pass", "tile-online-softmax{block_k=0}"], None, ["block_k must be positive"]),
}


@pytest.mark.parametrize("name", list(OPT_ERRORS))
def test_opt_user_error(name):
    argv, stdin, words = OPT_ERRORS[name]
    assert_user_error(attncc("opt", *argv, stdin=stdin), *words)


# ----------------------------------------------------------------------------- as a library

@pytest.mark.parametrize("name, kwargs", [
    ("wrong_rank.py", {}),
    ("head_dim_mismatch.py", {}),
    ("scores_only.py", {}),
    ("probs_returned.py", {}),
    ("no_defaults.py", {}),
    ("small_sdpa.py", {"target": "nosuch"}),
    ("small_sdpa.py", {"dtype": "f8e4m3"}),
    ("small_sdpa.py", {"shapes": {"Q": 3}}),
    ("small_sdpa.py", {"config": {"bogus": 1}}),
])
def test_library_raises_attncc_errors(name, kwargs):
    """The same errors reach a library user as AttnccError subclasses (nothing is built)."""
    with pytest.raises(AttnccError) as info:
        compile_variant(str(DATA / name), build=False, **{"target": "cpu", **kwargs})
    assert "\n" not in str(info.value)


def test_examples_are_not_errors():
    """Every example goes through the passes and the spec without a user error (no build)."""
    for path in EXAMPLES:
        k = compile_variant(str(path), "cpu", build=False)
        assert k.flash_op.attrs["softmax"] == "online"


def test_syntax_error_names_file_and_line_once():
    msg = assert_user_error(attncc("compile", data("syntax_error.py"), "--no-run"), "syntax error")
    assert msg == f"attncc: error: {data('syntax_error.py')}:7: syntax error: expected ':'", msg
