"""The first hour: mistakes an operator makes are caught by check-config, users list,
/readyz and the start-up log before a public issue fails."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx

from tests.e2e.harness import ENCRYPTION_KEY, running_bridge, wait_for

OTHER_KEY = base64.b64encode(b"another-32-byte-key-for-the-test"[:32]).decode()


def metric(bridge_url: str, line_start: str) -> float | None:
    text = httpx.get(f"{bridge_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_tokens_no_configured_key_opens_are_caught_before_an_issue_fails(
    tmp_path: Path,
) -> None:
    """After a rotation that dropped the old key (or another deployment's key on this
    database): users list, check-config --online, the start-up log and /readyz all say
    so; an issue labelled anyway is told the bridge is misconfigured, not to relink."""
    with running_bridge(tmp_path, start=False) as bridge:
        bridge.link_author()
        bridge.settings["encryption_keys"] = [OTHER_KEY]

        listing = bridge.cli("users", "list")
        assert listing.returncode == 0, listing.stderr
        assert "token undecryptable" in listing.stdout

        check = bridge.cli("check-config", "--online")
        assert check.returncode == 1
        [line] = [line for line in check.stdout.splitlines() if line.startswith("tokens:")]
        assert "FAILED" in line and "codertocat" in line
        assert "{" not in check.stdout + check.stderr  # readable lines, no JSON log lines

        bridge.start(ready=False)
        readiness = httpx.get(f"{bridge.url}/readyz", timeout=5)
        assert readiness.status_code == 503
        body = readiness.json()
        assert body["failing"] == ["vault"]
        assert "no configured encryption key opens" in body["checks"]["vault"]["error"]
        assert "tokens_undecryptable" in bridge.logs()
        assert metric(bridge.url, "coder_bridge_tokens_undecryptable") == 1.0

        assert bridge.deliver().status_code == 200
        comment = bridge.wait_for_status("Failed")
        assert "problem in its own configuration" in comment["body"]
        assert "operators have been alerted" in comment["body"]
        assert "linked again" not in comment["body"]
        assert bridge.coder.tasks == []
        wait_for(lambda: metric(bridge.url, 'coder_bridge_misconfigured_total{reason='
                                '"encryption_key"}') == 1.0, what="the misconfiguration count")
        assert bridge.stop() == 0

        bridge.settings["encryption_keys"] = [OTHER_KEY, ENCRYPTION_KEY]  # the old key back
        assert "token valid" in bridge.cli("users", "list").stdout
        bridge.start()  # ready
        assert httpx.get(f"{bridge.url}/readyz", timeout=5).json()["checks"]["vault"] == {
            "status": "ok"}


def test_check_config_online_finds_a_typo_in_a_template_or_a_preset(tmp_path: Path) -> None:
    routes = """
[[routes]]
match = { provider = "github", repository = "acme/*" }
template = "tasks-dokcer"

[[routes]]
match = { provider = "linear", team = "ENG" }
template = "tasks-docker"
preset = "lagre"

[[routes]]
match = { provider = "github", repository = "other/*" }
template = "tasks-docker"
preset = "large"
"""
    with running_bridge(tmp_path, start=False, presets=["small", "large"],
                        extra_toml=routes) as bridge:
        unchecked = bridge.cli("check-config", "--online")
        assert "templates: not checked: no linked account" in unchecked.stdout

        bridge.link_author()
        check = bridge.cli("check-config", "--online")
        assert check.returncode == 1
        lines = check.stdout.splitlines()
        assert "database: answers, schema current" in check.stdout
        assert "tokens: the configured keys open all 1 stored token(s)" in lines
        assert any(line.startswith("coder: Coder") and "Tasks API" in line for line in lines)
        assert 'coder.template: template "tasks-docker" found (as codertocat)' in lines
        assert any(line.startswith("routes[0].template: FAILED:")
                   and '"tasks-dokcer" was not found' in line for line in lines), lines
        assert any(line.startswith("routes[1].template: FAILED:")
                   and 'preset "lagre" does not exist' in line and '"large"' in line
                   for line in lines), lines
        assert ('routes[2].template: template "tasks-docker" with preset "large" found '
                "(as codertocat)") in lines
        assert "{" not in check.stdout + check.stderr


def test_check_config_online_names_the_database_and_a_schema_behind(tmp_path: Path) -> None:
    with running_bridge(tmp_path, start=False,
                        storage_url="postgresql://bridge:pw-not-shown@127.0.0.1:1/bridge"
                        ) as bridge:
        check = bridge.cli("check-config", "--online")
        assert check.returncode == 1
        [line] = [line for line in check.stdout.splitlines() if line.startswith("database:")]
        assert "FAILED: cannot connect to PostgreSQL at 127.0.0.1:1, database bridge" in line
        assert "(storage.url)" in line and "pw-not-shown" not in check.stdout + check.stderr


def test_deliveries_list_shows_what_each_delivery_led_to(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as bridge:
        bridge.link_author()
        assert bridge.deliver().status_code == 200
        bridge.wait_for_comment("/tasks/codertocat/")
        [task] = bridge.coder.tasks
        bridge.coder.set_task_state(task["id"], status="active", state="working")
        bridge.wait_for_status("Working")
        assert bridge.relabel("relabelled-while-working").status_code == 200
        wait_for(lambda: "relabelled-while-working\tCodertocat/Hello-World#1\ttrigger\tdone"
                 in bridge.cli("deliveries", "list").stdout, what="the second delivery")

        listing = bridge.cli("deliveries", "list").stdout.splitlines()
        assert listing[0].split("\t") == ["RECEIVED", "TRACKER", "DELIVERY", "ISSUE", "KIND",
                                          "JOB", "OUTCOME", "ATTEMPTS", "TASK", "LAST ERROR"]
        second, first = (line.split("\t") for line in listing[1:3])
        assert second[2:8] == ["relabelled-while-working", "Codertocat/Hello-World#1",
                               "trigger", "done", "existing", "1"]
        assert second[8] == "-"  # it started nothing: the task belongs to the first
        assert first[6] == "created" and "/tasks/codertocat/" in first[8]

        answer = json.loads(bridge.cli("deliveries", "list", "--json").stdout)
        outcomes = [(d["delivery_id"], d["outcome"]) for d in answer["deliveries"]]
        assert outcomes == [("relabelled-while-working", "existing"),
                            ("72d3162e-cc78-11e3-81ab-4c9367dc0958", "created")]


def test_the_bridge_never_writes_a_core_dump(tmp_path: Path) -> None:
    """A crash must not put the process's memory, decrypted tokens included, on disk."""
    with running_bridge(tmp_path) as bridge:
        assert bridge.process is not None
        limits = Path(f"/proc/{bridge.process.pid}/limits").read_text().splitlines()
        [core] = [line for line in limits if line.startswith("Max core file size")]
        assert core.split()[4:6] == ["0", "0"], core
