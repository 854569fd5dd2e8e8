from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from service.config import Secret, load_config, resolve_config_path
from service.errors import InvalidConfig
from tests.conftest import REPO, SHARED

KEY = base64.b64encode(b"k" * 32).decode()
ENV = {
    "CODER_BRIDGE_KEY": KEY,
    "GITHUB_WEBHOOK_SECRET": "hook-secret",
    "GITHUB_TOKEN": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "LINEAR_WEBHOOK_SECRET": "linear-secret",
    "LINEAR_API_KEY": "lin_api_example",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


MINIMAL = f"""
[security]
encryption_keys = ["{KEY}"]
[coder]
url = "https://coder.example.com/"
template = "tasks-docker"
"""


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(InvalidConfig) as info:
        load_config(write(tmp_path, text), env or {})
    return {p.key: p.problem for p in info.value.problems}


def test_example_config_loads_with_its_environment() -> None:
    config = load_config(REPO / "config.example.toml", ENV)
    assert config.coder.url == "https://coder.example.com"
    assert config.github is not None
    assert config.github.webhook_secrets == (Secret("hook-secret"),)
    assert config.github.trigger_label == "delegate-to-agent"
    assert config.security.encryption_keys == (b"k" * 32,)
    assert config.route_for("github", "acme/widgets") == ("python-agent", "large")
    assert config.route_for("github", "other/repo") == ("tasks-docker", "")
    assert config.route_for("linear", "eng") == ("tasks-docker", "")
    assert config.linear is not None and config.linear.api_key == Secret("lin_api_example")


def _documented_keys(toml_text: str) -> set[str]:
    """``section.key`` for every key written (or commented out) under a section header."""
    keys: set[str] = set()
    section = ""
    for line in toml_text.splitlines():
        header = re.match(r"\s*\[\[?([a-z_]+)\]?\]", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"\s*#?\s*([a-z_0-9]+)\s*=", line)
        if key and section:
            keys.add(f"{section}.{key.group(1)}")
    return keys


def test_example_config_documents_every_key_of_the_interface() -> None:
    interface = (SHARED / "spec" / "interface.md").read_text()
    block = interface.split("```toml", 1)[1].split("```", 1)[0]
    example = (REPO / "config.example.toml").read_text()
    assert _documented_keys(block) - _documented_keys(example) == set()


def test_minimal_config_takes_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), {})
    assert config.server.port == 8080
    assert config.server.public_url == "http://127.0.0.1:8080"
    assert config.coder.url == "https://coder.example.com"
    assert config.worker.max_attempts == 8
    assert config.github is None and config.linear is None
    assert config.delegation.acting_user == ("author",)


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    found = problems(tmp_path, """
[server]
port = 70000
prot = 1
[security]
encryption_keys = ["not-base64!"]
[coder]
url = "ftp://x"
api = "soap"
[github]
token = "env:MISSING_TOKEN"
[delegation]
acting_user = ["author", "boss"]
[worker]
concurrency = 0
[[routes]]
match = { provider = "linear", repository = "a/*" }
template = "t"
""")
    assert "must be at most 65535" in found["server.port"]
    assert "unknown key" in found["server.prot"]
    assert "32 bytes" in found["security.encryption_keys[0]"]
    assert "http(s) URL" in found["coder.url"]
    assert "soap" in found["coder.api"]
    assert "is required" in found["github.webhook_secret"]
    assert "MISSING_TOKEN is not set" in found["github.token"]
    assert "'boss'" in found["delegation.acting_user"]
    assert "at least 1" in found["worker.concurrency"]
    assert "only applies" in found["routes[0].match.repository"]


def test_missing_coder_section_and_keys_are_errors(tmp_path: Path) -> None:
    found = problems(tmp_path, "[server]\nport = 8081\n")
    assert "required" in found["coder"]
    assert "at least one key" in found["security.encryption_keys"]


def test_file_reference_strips_one_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    config = load_config(write(tmp_path, MINIMAL + f"""
[github]
webhook_secret = ["file:{secret_file}", "second"]
token = "t"
"""), {})
    assert config.github is not None
    assert [s.reveal() for s in config.github.webhook_secrets] == ["s3cret", "second"]


def test_unreadable_file_reference_names_key(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + """
[github]
webhook_secret = "file:/nonexistent/secret"
token = "t"
""")
    assert "cannot read /nonexistent/secret" in found["github.webhook_secret[0]"]


def test_github_token_and_app_are_exclusive(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + """
[github]
webhook_secret = "s"
token = "t"
app_id = 5
""")
    assert "not both" in found["github.token"]
    assert "together" in found["github.private_key"]


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + """
[github]
webhook_secret = "hook-secret-value"
token = "ghp_tokenvalue"
"""), {})
    text = repr(config)
    assert "hook-secret-value" not in text
    assert "ghp_tokenvalue" not in text
    assert KEY not in text and repr(b"k" * 32) not in text


def test_github_content_limits_default_to_githubs_and_can_be_disabled(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + """
[github]
webhook_secret = "s"
token = "t"
comments_per_hour = 0
"""), {})
    assert config.github is not None
    # a second longer than GitHub's minute: GitHub counts arrivals, and a write sent a
    # minute after another may arrive sooner than that when the first was slow
    assert config.github.content_windows == ((80, 61.0),)


def test_invalid_toml_is_one_clear_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, "[server\n")
    assert "not valid TOML" in found["--config"]


def test_config_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None, {}) is None
    assert resolve_config_path(None, {"CODER_BRIDGE_CONFIG": "/etc/x.toml"}) == Path("/etc/x.toml")
    (tmp_path / "config.toml").write_text("")
    assert resolve_config_path(None, {}) == Path("config.toml")
    assert resolve_config_path("other.toml", {"CODER_BRIDGE_CONFIG": "/x"}) == Path("other.toml")


def test_development_defaults_when_no_file() -> None:
    config = load_config(None, {})
    assert config.is_development_default
    assert config.storage.url == "sqlite:///./data/coder-bridge.db"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)


def test_numbers_of_seconds_may_come_from_the_environment_as_integers_do(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[security]
encryption_keys = ["{KEY}"]
[coder]
url = "https://coder.example.com"
timeout = "env:CODER_TIMEOUT"
[worker]
concurrency = "env:CONCURRENCY"
lease_seconds = "env:LEASE"
""")
    config = load_config(path, {"CODER_TIMEOUT": "12.5", "CONCURRENCY": "3", "LEASE": "90"})
    assert (config.coder.timeout, config.worker.concurrency, config.worker.lease_seconds) == (
        12.5, 3, 90.0)
    with pytest.raises(InvalidConfig) as caught:
        load_config(path, {"CODER_TIMEOUT": "soon", "CONCURRENCY": "3", "LEASE": "nan"})
    keys = {problem.key for problem in caught.value.problems}
    assert keys == {"coder.timeout", "worker.lease_seconds"}


def test_acting_user_choices_are_plain_words_not_secrets(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[security]
encryption_keys = ["{KEY}"]
[coder]
url = "https://coder.example.com"
[delegation]
acting_user = ["author", "labeler"]
""")
    assert load_config(path, {}).delegation.acting_user == ("author", "labeler")


def test_sync_and_command_keys_and_their_bounds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + """
[delegation]
command = "/bot"
[sync]
interval = 0
stop_on_unlabel = false
max_runtime = 3600
"""), {})
    assert config.delegation.command == "/bot"
    assert (config.sync.enabled, config.sync.stop_on_unlabel, config.sync.stop_on_close,
            config.sync.max_runtime) == (False, False, True, 3600.0)
    assert load_config(write(tmp_path, MINIMAL), {}).sync.interval == 15.0
    found = problems(tmp_path, MINIMAL + """
[delegation]
command = "/agent please"
[sync]
interval = 0.5
stop_on_close = "maybe"
""")
    assert set(found) == {"delegation.command", "sync.interval", "sync.stop_on_close"}


def test_oauth_clients_need_both_halves_and_an_https_public_url(tmp_path: Path) -> None:
    github = """
[github]
webhook_secret = "s"
token = "t"
oauth_client_id = "Iv1.abc"
"""
    assert problems(tmp_path, MINIMAL + github) == {
        "github.oauth_client_secret":
            "github.oauth_client_id and github.oauth_client_secret must be set together"}
    both = MINIMAL.replace("[coder]", '[server]\npublic_url = "http://bridge.example.com"\n'
                                      "[coder]") + github + 'oauth_client_secret = "x"\n'
    assert "must be an https URL" in problems(tmp_path, both)["server.public_url"]
    secure = load_config(write(tmp_path, both.replace("http://bridge", "https://bridge")), {})
    assert secure.github is not None and secure.github.oauth is not None
    assert secure.github.oauth.client_id == "Iv1.abc"
    assert secure.github.web_url == "https://github.com"
    assert "x" not in repr(secure.github.oauth)
    local = load_config(write(tmp_path, MINIMAL.replace('template = "tasks-docker"',
                                                        'oauth2_client_id = "c"\n'
                                                        'oauth2_client_secret = "s"')), {})
    assert local.coder.oauth2 is not None  # http on 127.0.0.1 is fine for development


def test_allowlists_take_globs_and_team_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + """
[github]
webhook_secret = "s"
token = "t"
repositories = ["acme/*", "Octo/Hello-World"]
[linear]
webhook_secret = "s"
api_key = "k"
teams = ["ENG"]
"""), {})
    assert config.github is not None and config.linear is not None
    assert config.github.enabled("acme/api") and config.github.enabled("octo/hello-world")
    assert not config.github.enabled("other/api") and not config.github.enabled("acmex/api")
    assert config.linear.enabled("eng") and not config.linear.enabled("OPS")
    everything = load_config(write(tmp_path, MINIMAL), {})
    assert everything.github is None
    found = problems(tmp_path, MINIMAL + """
[github]
webhook_secret = "s"
token = "t"
repositories = ["just-a-name", "a/b c"]
[linear]
webhook_secret = "s"
api_key = "k"
teams = "ENG"
""")
    assert set(found) == {"github.repositories[0]", "github.repositories[1]", "linear.teams"}
