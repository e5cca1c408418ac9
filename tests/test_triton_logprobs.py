"""The Triton log-prob kernel, tested on the CPU: runs tests/triton_cases.py under Triton's interpreter.

Triton decides between compiling and interpreting when it is first imported, and other tests (or
torch.compile) may have imported it already in this process, so the cases run in a child process with
TRITON_INTERPRET=1 set from the start. Skipped, saying why, without the `triton` package (it is in the
`test` extra on Linux x86-64; `pip install -e ".[triton]"` elsewhere, where a wheel exists).
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the triton package is not installed (pip install -e '.[triton]')")

HERE = os.path.dirname(os.path.abspath(__file__))


def test_triton_kernel_cases_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("MINIRLHF_TRITON", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           os.path.join(HERE, "triton_cases.py")],
                          cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, report  # the cases ran, none skipped
