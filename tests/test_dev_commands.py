"""What a newcomer meets first: `make lab`'s URL, git's ignores, and a test run on a machine without a browser."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.jupyter_lab import lab_environment

ROOT = Path(__file__).resolve().parent.parent
#: the line JupyterLab prints with the URL to open (token included)
URL = re.compile(r"http://127\.0\.0\.1:(\d+)(/\S*)\?token=(\w+)")
#: seconds `make lab` may take to print its URL (the kernelspec install and the lab's start, on a busy machine)
LAB_START = 90


def answer_of(url: str) -> str:
    """GET `url`, waiting while the lab comes up (it prints its URL a moment before it accepts connections)."""
    deadline = time.monotonic() + LAB_START
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                return str(answer.read().decode())
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_make_lab_prints_the_url_that_opens_the_getting_started_notebook(tmp_path: Path) -> None:
    env = lab_environment(tmp_path / "lab-state", [])
    process = subprocess.Popen(
        ["make", "--no-print-directory", "lab", "LAB_ARGS=--no-browser --ServerApp.port=0"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # make, jupyter and its kernels in one group of ours, stopped together below
    )
    printed: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            printed.append(line)
            if URL.search(line):
                found.set()
        found.set()  # the output ended: make or the lab exited

    threading.Thread(target=read, daemon=True).start()
    try:
        found.wait(LAB_START)
        urls = [match for line in printed if (match := URL.search(line))]
        assert urls, "make lab printed no URL:\n" + "".join(printed)
        port, path, token = urls[-1].groups()
        assert path == "/lab/tree/getting-started.ipynb", "".join(printed)
        base = f"http://127.0.0.1:{port}"
        notebook = json.loads(answer_of(f"{base}/api/contents/getting-started.ipynb?token={token}"))
        assert notebook["type"] == "notebook"
        assert notebook["path"] == "getting-started.ipynb"
        assert "JupyterLab" in answer_of(f"{base}{path}?token={token}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_jupyter_checkpoints_are_ignored_by_git() -> None:
    checkpoint = "notebooks/.ipynb_checkpoints/getting-started-checkpoint.ipynb"
    answer = subprocess.run(["git", "check-ignore", checkpoint], cwd=ROOT, capture_output=True, text=True)
    assert answer.returncode == 0, f"git does not ignore {checkpoint}: {answer.stdout}{answer.stderr}"


def browser_tests(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_browser.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_browser_the_run_names_the_browser_tests_it_could_not_run(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["EVENTUAL_CHROMIUM"] = str(tmp_path / "no-chromium-here")
    answer = browser_tests(env)
    out = answer.stdout + answer.stderr
    assert answer.returncode == 0, out  # everything else still runs on a machine without a browser
    names = re.findall(r"^def (test_\w+)\(", (ROOT / "tests" / "test_browser.py").read_text(), re.MULTILINE)
    assert f"browser tests not run ({len(names)})" in out, out
    assert f"no {tmp_path / 'no-chromium-here'}: install Debian's `chromium` package" in out, out
    for name in names:
        assert f"tests/test_browser.py::{name}" in out, out
    env["CI"] = "true"  # where a browser is part of the deal, a browser test that could not run fails
    answer = browser_tests(env)
    assert answer.returncode != 0, answer.stdout + answer.stderr
    assert "skipped in CI" in answer.stdout, answer.stdout + answer.stderr
