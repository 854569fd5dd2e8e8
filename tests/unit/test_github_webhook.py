"""GitHub webhook verification and parsing, against the shared fixtures (byte-for-byte)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from starlette.datastructures import Headers

from service.core.events import Change, Comment, Ignored, IssueEvent, Person, Ping, Trigger
from service.errors import MalformedPayload, SignatureError
from service.trackers.github.webhook import parse_github_delivery, verify_github_signature

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "github"
HEADER_SETS: dict[str, Any] = json.loads((FIXTURES / "headers.json").read_text())
SECRET: str = HEADER_SETS["secret"]
FILES = ["issues__labeled.json", "issues__opened.json", "issues__unlabeled.json", "ping.json"]


def fixture(name: str) -> tuple[dict[str, str], bytes]:
    """A fixture's header set and its exact bytes."""
    return dict(HEADER_SETS[name]), (FIXTURES / name).read_bytes()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def resigned(name: str, body: bytes, **header_changes: str) -> tuple[dict[str, str], bytes]:
    """The fixture's headers for an edited ``body``, signed with the fixture secret."""
    headers, _ = fixture(name)
    headers["X-Hub-Signature-256"] = sign(body)
    headers.update(header_changes)
    return headers, body


def edited(name: str, change: Any) -> tuple[dict[str, str], bytes]:
    """A fixture payload edited by ``change(payload)``, re-serialised and re-signed."""
    payload = json.loads((FIXTURES / name).read_bytes())
    change(payload)
    return resigned(name, json.dumps(payload).encode())


def parse(headers: Any, body: bytes, label: str = "bug") -> Any:
    return parse_github_delivery(headers, body, secrets=[SECRET], trigger_label=label)


# ---------------------------------------------------------------------------
# Signature


def test_githubs_published_test_vector_verifies() -> None:
    headers = {
        "X-Hub-Signature-256": (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        )
    }
    verify_github_signature(headers, b"Hello, World!", ["It's a Secret to Everybody"])


@pytest.mark.parametrize("name", FILES)
def test_every_fixture_verifies_with_its_headers(name: str) -> None:
    headers, body = fixture(name)
    verify_github_signature(headers, body, [SECRET])


@pytest.mark.parametrize("name", FILES)
def test_header_lookup_ignores_case(name: str) -> None:
    headers, body = fixture(name)
    verify_github_signature({k.lower(): v for k, v in headers.items()}, body, [SECRET])
    verify_github_signature({k.upper(): v for k, v in headers.items()}, body, [SECRET])
    verify_github_signature(Headers(headers), body, [SECRET])


def test_tampered_body_is_rejected() -> None:
    headers, body = fixture("issues__labeled.json")
    with pytest.raises(SignatureError, match="matches no configured secret"):
        verify_github_signature(headers, body.replace(b"Codertocat", b"Mallory1234"), [SECRET])


def test_missing_final_newline_is_a_different_body() -> None:
    headers, body = fixture("issues__labeled.json")
    with pytest.raises(SignatureError):
        verify_github_signature(headers, body.rstrip(b"\n"), [SECRET])


def test_wrong_secret_is_rejected() -> None:
    headers, body = fixture("ping.json")
    with pytest.raises(SignatureError):
        verify_github_signature(headers, body, ["not the secret"])


def test_missing_signature_header_is_rejected() -> None:
    headers, body = fixture("ping.json")
    del headers["X-Hub-Signature-256"]
    with pytest.raises(SignatureError, match="missing X-Hub-Signature-256"):
        verify_github_signature(headers, body, [SECRET])


def test_legacy_sha1_signature_alone_is_not_accepted() -> None:
    headers, body = fixture("ping.json")
    del headers["X-Hub-Signature-256"]
    assert headers["X-Hub-Signature"].startswith("sha1=")
    with pytest.raises(SignatureError):
        verify_github_signature(headers, body, [SECRET])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256=",
        "sha256=xyz",
        "sha1=d5ad90924b395deb7ec2540b543e5aa9e8a92e53",
        "2a13717f2e771ae3cd64cbaa49c1c44048f79570b1d98fefea7ca40387e432af",
        "sha256=2a13717f2e771ae3cd64cbaa49c1c44048f79570b1d98fefea7ca40387e432a",
        "sha256=2a13717f2e771ae3cd64cbaa49c1c44048f79570b1d98fefea7ca40387e432afé",
    ],
)
def test_malformed_signature_header_is_rejected(value: str) -> None:
    headers, body = fixture("issues__labeled.json")
    headers["X-Hub-Signature-256"] = value
    with pytest.raises(SignatureError):
        verify_github_signature(headers, body, [SECRET])


def test_uppercase_hex_digest_is_accepted() -> None:
    headers, body = fixture("issues__labeled.json")
    headers["X-Hub-Signature-256"] = "sha256=" + headers["X-Hub-Signature-256"][7:].upper()
    verify_github_signature(headers, body, [SECRET])


def test_rotation_accepts_a_match_on_the_second_secret() -> None:
    headers, body = fixture("issues__labeled.json")
    verify_github_signature(headers, body, ["the new secret", SECRET])


def test_no_configured_secret_rejects_everything() -> None:
    headers, body = fixture("ping.json")
    with pytest.raises(SignatureError, match="no GitHub webhook secret"):
        verify_github_signature(headers, body, [])
    with pytest.raises(SignatureError):
        verify_github_signature(headers, body, [""])


def test_parse_verifies_before_decoding() -> None:
    headers, _ = fixture("issues__labeled.json")
    with pytest.raises(SignatureError):
        parse(headers, b"this is not json")


# ---------------------------------------------------------------------------
# Parsing the fixtures

CODERTOCAT = Person("21031067", "Codertocat")


def expected_event(delivery_id: str, action: str) -> IssueEvent:
    return IssueEvent(
        tracker="github",
        delivery_id=delivery_id,
        issue_key="github:186853002:1",
        issue_id="444500041",
        number="1",
        title="Spelling error in the README file",
        body="It looks like you accidently spelled 'commit' with two 't's.",
        url="https://github.com/Codertocat/Hello-World/issues/1",
        scope="Codertocat/Hello-World",
        author=CODERTOCAT,
        labeler=CODERTOCAT,
        installation_id=None,
        extra={
            "action": action,
            "repository_url": "https://github.com/Codertocat/Hello-World",
            "sender_type": "User",
            "hook_id": "292430182",
            "created_at": "2019-05-15T15:20:18Z",
            "updated_at": "2019-05-15T15:20:18Z",
        },
    )


def test_labeled_with_the_trigger_label_is_a_trigger_with_exact_fields() -> None:
    decision = parse(*fixture("issues__labeled.json"), label="bug")
    assert decision == Trigger(expected_event("72d3162e-cc78-11e3-81ab-4c9367dc0958", "labeled"))


def test_trigger_event_survives_the_job_queue_round_trip() -> None:
    decision = parse(*fixture("issues__labeled.json"))
    assert isinstance(decision, Trigger)
    assert IssueEvent.from_json(decision.event.to_json()) == decision.event


def test_labeled_under_the_default_trigger_label_is_ignored() -> None:
    decision = parse(*fixture("issues__labeled.json"), label="delegate-to-agent")
    assert decision == Ignored("label 'bug' is not the trigger label")


def test_trigger_label_matches_case_insensitively() -> None:
    assert isinstance(parse(*fixture("issues__labeled.json"), label="BUG"), Trigger)


def test_opened_with_the_trigger_label_is_a_trigger() -> None:
    decision = parse(*fixture("issues__opened.json"), label="BUG")
    assert decision == Trigger(expected_event("72d3162e-cc78-11e3-81ab-4c9367dc0960", "opened"))


def test_opened_and_labeled_share_the_issue_key() -> None:
    labeled = parse(*fixture("issues__labeled.json"))
    opened = parse(*fixture("issues__opened.json"))
    assert isinstance(labeled, Trigger) and isinstance(opened, Trigger)
    assert labeled.event.issue_key == opened.event.issue_key
    assert labeled.event.delivery_id != opened.event.delivery_id


def test_opened_without_the_trigger_label_is_ignored() -> None:
    decision = parse(*fixture("issues__opened.json"), label="delegate-to-agent")
    assert decision == Ignored("issue was opened without the trigger label")


def test_removing_the_trigger_label_is_a_change_that_may_stop_the_agent() -> None:
    decision = parse(*fixture("issues__unlabeled.json"))
    assert isinstance(decision, Change)
    assert decision.event.change == "unlabeled"
    assert decision.event.issue_key == "github:186853002:1"
    assert decision.event.actor == CODERTOCAT


def test_removing_another_label_is_ignored() -> None:
    decision = parse(*fixture("issues__unlabeled.json"), label="delegate-to-agent")
    assert decision == Ignored("label 'bug' is not the trigger label")


def test_closing_the_issue_is_a_change() -> None:
    decision = parse(*edited("issues__labeled.json", lambda p: p.update(action="closed")))
    assert isinstance(decision, Change) and decision.event.change == "closed"


@pytest.mark.parametrize("association", ["CONTRIBUTOR", "NONE", "FIRST_TIMER", None])
def test_an_issue_opened_with_the_label_by_an_outsider_is_ignored_and_counted(
    association: str | None,
) -> None:
    decision = parse(*edited("issues__opened.json",
                             lambda p: p["issue"].update(author_association=association)))
    assert isinstance(decision, Ignored) and decision.code == "outsider"


@pytest.mark.parametrize("association", ["OWNER", "MEMBER", "COLLABORATOR"])
def test_an_issue_opened_with_the_label_by_a_member_triggers(association: str) -> None:
    decision = parse(*edited("issues__opened.json",
                             lambda p: p["issue"].update(author_association=association)))
    assert isinstance(decision, Trigger)


def comment_delivery(body: str, **changes: Any) -> tuple[dict[str, str], bytes]:
    """An ``issue_comment`` ``created`` delivery on the fixture's issue."""
    payload = json.loads((FIXTURES / "issues__labeled.json").read_bytes())
    payload.pop("label")
    payload["action"] = "created"
    payload["comment"] = {"id": 7001, "body": body, "user": dict(payload["sender"]),
                          "author_association": "OWNER"}
    payload.update(changes)
    body_bytes = json.dumps(payload).encode()
    return resigned("issues__labeled.json", body_bytes, **{"X-GitHub-Event": "issue_comment"})


def test_a_command_comment_is_a_comment_for_the_agent() -> None:
    decision = parse(*comment_delivery("/agent please also fix the docs\nthanks"))
    assert isinstance(decision, Comment)
    event = decision.event
    assert (event.issue_key, event.comment_id, event.author, event.text) == (
        "github:186853002:1", "7001", CODERTOCAT, "/agent please also fix the docs\nthanks")


@pytest.mark.parametrize("body", ["thanks!", "see /agent stop", "/agents", ""])
def test_comments_that_are_not_commands_are_ignored(body: str) -> None:
    assert isinstance(parse(*comment_delivery(body)), Ignored)


def test_bots_and_the_bridge_itself_never_run_commands() -> None:
    bot = {"login": "coder-bridge[bot]", "id": 99, "type": "Bot"}
    decision = parse(*comment_delivery("/agent stop", sender=bot))
    assert decision == Ignored("comments by bots never run commands")


def test_edited_and_deleted_comments_are_not_commands() -> None:
    for action in ("edited", "deleted"):
        decision = parse(*comment_delivery("/agent stop", action=action))
        assert decision == Ignored(f"comment action '{action}' is not handled")


def test_ping_is_a_ping() -> None:
    assert parse(*fixture("ping.json")) == Ping()


OTHER_ACTIONS = ["deleted", "edited", "reopened", "assigned"]


@pytest.mark.parametrize("action", OTHER_ACTIONS)
def test_other_issue_actions_are_ignored_by_name(action: str) -> None:
    decision = parse(*edited("issues__labeled.json", lambda p: p.update(action=action)))
    assert decision == Ignored(f"action '{action}' is not handled")


def test_unknown_issue_action_is_ignored_as_unsupported() -> None:
    decision = parse(*edited("issues__labeled.json", lambda p: p.update(action="teleported")))
    assert decision == Ignored("action 'teleported' is not supported")


def test_other_events_are_ignored_by_name() -> None:
    headers, body = fixture("ping.json")
    headers["X-GitHub-Event"] = "push"
    headers_unknown = dict(headers, **{"X-GitHub-Event": "frobnicate"})
    assert parse(headers, body) == Ignored("event 'push' is not handled")
    assert parse(headers_unknown, body) == Ignored("event 'frobnicate' is not supported")


def test_ignored_action_does_not_need_a_well_formed_issue() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["action"] = "edited"
        del payload["issue"]

    assert parse(*edited("issues__labeled.json", change)) == Ignored(
        "action 'edited' is not handled"
    )


def test_null_body_becomes_empty_text() -> None:
    decision = parse(*edited("issues__labeled.json", lambda p: p["issue"].update(body=None)))
    assert isinstance(decision, Trigger)
    assert decision.event.body == ""


def test_app_delivery_carries_the_installation_id() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["installation"] = {"id": 12345678, "node_id": "MDIz"}

    decision = parse(*edited("issues__labeled.json", change))
    assert isinstance(decision, Trigger)
    assert decision.event.installation_id == 12345678


def test_label_applied_by_a_bot_still_triggers() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["sender"].update(login="triage[bot]", id=99, type="Bot")

    decision = parse(*edited("issues__labeled.json", change))
    assert isinstance(decision, Trigger)
    assert decision.event.labeler == Person("99", "triage[bot]")
    assert decision.event.author == CODERTOCAT
    assert decision.event.extra["sender_type"] == "Bot"


def test_labeled_without_a_label_key_is_ignored() -> None:
    decision = parse(*edited("issues__labeled.json", lambda p: p.pop("label")))
    assert decision == Ignored("labeled delivery names no label")


def test_pull_request_items_are_not_delegated() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["issue"]["pull_request"] = {"url": "https://api.github.com/x"}

    assert parse(*edited("issues__labeled.json", change)) == Ignored(
        "pull requests are not delegated"
    )


def test_form_encoded_delivery_with_a_json_payload_parses() -> None:
    _, raw = fixture("issues__labeled.json")
    body = urlencode({"payload": raw.decode()}).encode()
    headers, body = resigned(
        "issues__labeled.json", body, **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert parse(headers, body) == parse(*fixture("issues__labeled.json"))


# ---------------------------------------------------------------------------
# Malformed deliveries (edited copies signed with the fixture secret)


UNDECODABLE_BODIES = [
    (b"this is not json", "application/json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "application/json", "not valid JSON"),
    (b"[1, 2, 3]", "application/json", "JSON array, not an object"),
    (b'"text"', "application/json", "JSON string, not an object"),
    (b"[" * 100_000, "application/json", "not valid JSON"),
    (b"zen=hello", "application/x-www-form-urlencoded", "no 'payload' field"),
    (b"payload=%7Bnot-json", "application/x-www-form-urlencoded", "not valid JSON"),
    (b"payload=%FF", "application/x-www-form-urlencoded", "cannot be decoded"),
]


@pytest.mark.parametrize(("body", "content_type", "message"), UNDECODABLE_BODIES)
def test_undecodable_bodies_are_malformed(body: bytes, content_type: str, message: str) -> None:
    headers, body = resigned("issues__labeled.json", body, **{"Content-Type": content_type})
    with pytest.raises(MalformedPayload, match=message):
        parse(headers, body)


MISSING_FIELDS = [
    (("issue",), "issue is missing"),
    (("issue", "number"), "issue.number is missing"),
    (("issue", "id"), "issue.id is missing"),
    (("issue", "user"), "issue.user is missing"),
    (("issue", "user", "id"), "issue.user.id is missing"),
    (("repository",), "repository is missing"),
    (("repository", "id"), "repository.id is missing"),
    (("repository", "full_name"), "repository.full_name is missing"),
    (("sender",), "sender is missing"),
    (("action",), "action is missing"),
]


@pytest.mark.parametrize(("path", "message"), MISSING_FIELDS)
def test_missing_required_fields_are_malformed(path: tuple[str, ...], message: str) -> None:
    def change(payload: dict[str, Any]) -> None:
        target = payload
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    with pytest.raises(MalformedPayload, match=message):
        parse(*edited("issues__labeled.json", change))


WRONGLY_TYPED_FIELDS = [
    (lambda p: p["issue"].update(number="1"), "issue.number is a JSON string, expected int"),
    (lambda p: p["issue"].update(number=True), "issue.number is a boolean"),
    (lambda p: p.update(issue=[]), "issue is a JSON array, expected an object"),
    (lambda p: p["label"].update(name=7), "label.name is a JSON number, expected str"),
    (lambda p: p.update(label="bug"), "label is a JSON string, expected an object"),
    (lambda p: p["issue"].update(body=5), "issue.body is a JSON number"),
    (lambda p: p.update(installation={"id": "x"}), "installation.id is a JSON string"),
    (lambda p: p.update(action=3), "action is a JSON number"),
]


@pytest.mark.parametrize(("change", "message"), WRONGLY_TYPED_FIELDS)
def test_wrongly_typed_fields_are_malformed(change: Any, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse(*edited("issues__labeled.json", change))


def test_opened_with_malformed_labels_is_malformed() -> None:
    headers, body = edited("issues__opened.json", lambda p: p["issue"].update(labels="bug"))
    with pytest.raises(MalformedPayload, match=r"issue\.labels is a JSON string, expected a list"):
        parse(headers, body)


@pytest.mark.parametrize("header", ["X-GitHub-Delivery", "X-GitHub-Event"])
def test_missing_delivery_headers_are_malformed(header: str) -> None:
    headers, body = fixture("issues__labeled.json")
    del headers[header]
    with pytest.raises(MalformedPayload, match=f"missing {header}"):
        parse(headers, body)


def test_absurd_delivery_id_is_malformed() -> None:
    headers, body = fixture("issues__labeled.json")
    headers["X-GitHub-Delivery"] = "x" * 500
    with pytest.raises(MalformedPayload):
        parse(headers, body)


def test_starlette_headers_are_accepted_by_the_parser() -> None:
    headers, body = fixture("issues__labeled.json")
    assert isinstance(parse(Headers(headers), body), Trigger)


# ---------------------------------------------------------------------------
# Any value in any field that is read

LABELED = "issues__labeled.json"
OPENED = "issues__opened.json"
DELETED = object()


def changed(name: str, changes: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """The fixture with each dotted path (``issue.labels.0.name``) set, or ``DELETED``.

    Missing objects on the way are created.
    """

    def change(payload: dict[str, Any]) -> None:
        for path, value in changes.items():
            *parents, last = [int(key) if key.isdigit() else key for key in path.split(".")]
            target: Any = payload
            for key in parents:
                target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
            if value is not DELETED:
                target[last] = value
            elif isinstance(target, dict):
                target.pop(last, None)
            else:
                del target[last]

    return edited(name, change)


READ_FIELDS = [
    *("action", "label", "label.name", "issue", "issue.id", "issue.number", "issue.title"),
    *("issue.html_url", "issue.body", "issue.pull_request", "issue.user", "issue.user.id"),
    *("issue.user.login", "issue.labels", "issue.labels.0", "issue.labels.0.name"),
    *("repository", "repository.id", "repository.full_name", "repository.html_url"),
    *("sender", "sender.id", "sender.login", "sender.type", "installation", "installation.id"),
]
JSON_VALUES: list[Any] = [
    *(DELETED, None, True, False, 0, -1, 7, 1.0, 1.5, "", "bug", "labeled"),
    *(2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1),
    *([], [{"name": "bug"}], {}, {"name": "bug"}, {"id": 1, "login": "x"}),
]


@pytest.mark.parametrize("name", [LABELED, OPENED])
def test_every_read_field_with_any_json_value_is_decided_or_refused_by_name(name: str) -> None:
    """Whatever value a field the parser reads holds, the delivery is decided, or refused
    with a ``MalformedPayload`` (400) that names the field: never another error (500)."""
    decided = refused = 0
    for path in READ_FIELDS:
        for value in JSON_VALUES:
            try:
                parse(*changed(name, {path: value}))
            except MalformedPayload as exc:
                refused += 1
                top = path.split(".")[0]
                assert top in str(exc) or "body" in str(exc), (path, value, str(exc))
            else:
                decided += 1
    assert decided > 50 and refused > 50  # both outcomes were exercised
