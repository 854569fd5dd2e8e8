"""The demo README describes runs in one command, and again."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO
from tests.fakes.server import free_port


def test_the_demo_runs_in_one_command_and_reruns() -> None:
    for _ in range(2):
        ports = [str(free_port()) for _ in range(3)]
        result = subprocess.run(
            [sys.executable, "-m", "tests.fakes.demo", "run", "--coder-port", ports[0],
             "--github-port", ports[1], "--bridge-port", ports[2]],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "linked github 21031067 to Coder user alice" in out
        assert 'delivery → 200 {"status": "accepted"' in out
        assert 'GitHub redelivers it → 200 {"status": "duplicate"' in out
        assert f"(http://127.0.0.1:{ports[0]}/tasks/alice/" in out
        assert "The link opens the task's page on the fake Coder: HTTP 200" in out
