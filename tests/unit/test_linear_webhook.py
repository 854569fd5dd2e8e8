"""Linear webhook verification, freshness and parsing, against the shared fixture (as is)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import msgspec
import pytest
from starlette.datastructures import Headers

from service.core.events import Change, Comment, Ignored, IssueEvent, Person, Trigger
from service.errors import MalformedPayload, SignatureError
from service.trackers.linear.webhook import (
    check_linear_freshness,
    parse_linear_delivery,
    verify_linear_signature,
)
from tests.conftest import FIXTURES

FIXTURE = "issue__update_labeled.json"
HEADER_SET: dict[str, Any] = json.loads((FIXTURES / "linear" / "headers.json").read_text())
SECRET: str = HEADER_SET["secret"]
BODY: bytes = (FIXTURES / "linear" / FIXTURE).read_bytes()
SENT_MS = 1_768_472_493_512  # the fixture's webhookTimestamp
NOW = SENT_MS / 1000
LABEL = "delegate-to-agent"
TRIGGER_ID = "d4c3b2a1-0f9e-4d8c-9b7a-6f5e4d3c2b1a"
FEATURE_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
ADA = Person("5f8c3b8e-2a41-4c55-9a3e-0d6f1c2b7a10", "Ada Lovelace")


def fixture() -> tuple[dict[str, str], bytes]:
    """The fixture's header set and its exact bytes."""
    return dict(HEADER_SET["headers"]), BODY


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def edited(change: Any) -> tuple[dict[str, str], bytes]:
    """The fixture payload edited by ``change(payload)``, re-serialised and re-signed."""
    payload = json.loads(BODY)
    change(payload)
    return resigned(json.dumps(payload).encode())


def resigned(body: bytes, **header_changes: str) -> tuple[dict[str, str], bytes]:
    """The fixture's headers for another ``body``, signed with the fixture secret."""
    headers, _ = fixture()
    headers["Linear-Signature"] = sign(body)
    headers.update(header_changes)
    return headers, body


def parse(headers: Any, body: bytes, *, label: str = LABEL, now: float = NOW) -> Any:
    return parse_linear_delivery(headers, body, secrets=[SECRET], trigger_label=label, now=now)


def set_labels(payload: dict[str, Any], current: list[str], previous: Any = ...) -> None:
    """Set ``data.labelIds`` and, unless ``...``, ``updatedFrom.labelIds``."""
    payload["data"]["labelIds"] = current
    if previous is ...:
        payload["updatedFrom"].pop("labelIds", None)
    else:
        payload["updatedFrom"]["labelIds"] = previous


# ---------------------------------------------------------------------------
# Signature


def test_fixture_verifies_with_its_header_set_and_secret() -> None:
    headers, body = fixture()
    verify_linear_signature(headers, body, [SECRET])


def test_header_lookup_ignores_case() -> None:
    headers, body = fixture()
    verify_linear_signature({k.lower(): v for k, v in headers.items()}, body, [SECRET])
    verify_linear_signature({k.upper(): v for k, v in headers.items()}, body, [SECRET])
    verify_linear_signature(Headers(headers), body, [SECRET])


def test_tampered_body_is_rejected() -> None:
    headers, body = fixture()
    with pytest.raises(SignatureError, match="matches no configured secret"):
        verify_linear_signature(headers, body.replace(b"Ada Lovelace", b"Eve Mallory1"), [SECRET])


def test_missing_final_newline_is_a_different_body() -> None:
    headers, body = fixture()
    assert body.endswith(b"\n")
    with pytest.raises(SignatureError):
        verify_linear_signature(headers, body.rstrip(b"\n"), [SECRET])


def test_wrong_secret_is_rejected() -> None:
    headers, body = fixture()
    with pytest.raises(SignatureError, match="matches no configured secret"):
        verify_linear_signature(headers, body, ["not the secret"])


def test_missing_signature_header_is_rejected() -> None:
    headers, body = fixture()
    del headers["Linear-Signature"]
    with pytest.raises(SignatureError, match="missing Linear-Signature"):
        verify_linear_signature(headers, body, [SECRET])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "xyz",
        "sha256=" + sign(BODY),  # Linear sends the bare hex, no prefix
        sign(BODY)[:-1],
        sign(BODY) + "0",
        sign(BODY)[:-1] + "é",
        "z" * 64,
    ],
)
def test_malformed_signature_header_is_rejected(value: str) -> None:
    headers, body = fixture()
    headers["Linear-Signature"] = value
    with pytest.raises(SignatureError):
        verify_linear_signature(headers, body, [SECRET])


def test_uppercase_hex_digest_is_accepted() -> None:
    headers, body = fixture()
    headers["Linear-Signature"] = headers["Linear-Signature"].upper()
    verify_linear_signature(headers, body, [SECRET])


def test_rotation_accepts_a_match_on_either_secret() -> None:
    headers, body = fixture()
    verify_linear_signature(headers, body, ["the new secret", SECRET])
    verify_linear_signature(headers, body, [SECRET, "the new secret"])


def test_no_configured_secret_rejects_everything() -> None:
    headers, body = fixture()
    with pytest.raises(SignatureError, match="no Linear webhook secret"):
        verify_linear_signature(headers, body, [])
    with pytest.raises(SignatureError):
        verify_linear_signature(headers, body, [""])


def test_parse_verifies_before_decoding() -> None:
    headers, _ = fixture()
    with pytest.raises(SignatureError):
        parse(headers, b"this is not json")


# ---------------------------------------------------------------------------
# Freshness window (injected clock)


@pytest.mark.parametrize("offset", [0, 1, -1, 59.9, -59.9, 60, -60])
def test_delivery_within_60_seconds_is_accepted(offset: float) -> None:
    assert isinstance(parse(*fixture(), now=NOW + offset), Trigger)


@pytest.mark.parametrize(("offset", "when"), [(61, "old"), (-61, "in the future"), (3600, "old")])
def test_delivery_61_seconds_off_is_a_signature_error(offset: float, when: str) -> None:
    with pytest.raises(SignatureError, match=f"{abs(offset):.0f} s {when}") as caught:
        parse(*fixture(), now=NOW + offset)
    assert caught.value.status == 401
    assert "60 s window" in str(caught.value)


def test_stale_delivery_is_refused_even_when_not_a_trigger() -> None:
    with pytest.raises(SignatureError):
        parse(*edited(lambda p: p.update(type="Comment")), now=NOW + 120)


def test_the_unsigned_timestamp_header_never_makes_a_delivery_fresh() -> None:
    """A replay of a signed body without ``webhookTimestamp`` cannot borrow a fresh
    (unsigned) ``Linear-Timestamp`` header to pass the window."""
    headers, body = edited(lambda p: p.pop("webhookTimestamp"))
    headers["Linear-Timestamp"] = str(SENT_MS)
    with pytest.raises(SignatureError, match="no webhookTimestamp") as caught:
        parse(headers, body, now=NOW + 30)
    assert caught.value.status == 401


def test_body_timestamp_wins_over_the_header() -> None:
    headers, body = fixture()
    headers["Linear-Timestamp"] = str(SENT_MS - 3_600_000)
    assert isinstance(parse(headers, body), Trigger)


def test_no_timestamp_in_the_body_is_refused_as_a_possible_replay() -> None:
    with pytest.raises(SignatureError, match="no webhookTimestamp"):
        parse(*edited(lambda p: p.pop("webhookTimestamp")))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1768472493512", "webhookTimestamp is a JSON string"),
        (True, "webhookTimestamp is a JSON boolean"),
        (None, "webhookTimestamp is a JSON null"),
    ],
)
def test_badly_typed_body_timestamp_is_malformed(value: Any, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse(*edited(lambda p: p.update(webhookTimestamp=value)))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_timestamp_is_malformed_not_accepted(literal: bytes) -> None:
    body = BODY.replace(b"1768472493512", literal)
    with pytest.raises(MalformedPayload, match="not valid JSON"):  # refused by the decoder
        parse(*resigned(body))


def test_freshness_check_alone_takes_the_clock_as_an_argument() -> None:
    check_linear_freshness({"webhookTimestamp": 10_000}, now=70.0)
    with pytest.raises(SignatureError):
        check_linear_freshness({"webhookTimestamp": 10_000}, now=70.001)


# ---------------------------------------------------------------------------
# Parsing the fixture

EXPECTED = IssueEvent(
    tracker="linear",
    delivery_id="234d1a4e-b617-4388-90fe-adc3633d6b72",
    issue_key="linear:9b2f6c1d-3e4a-4f5b-8c7d-1a2b3c4d5e6f",
    issue_id="9b2f6c1d-3e4a-4f5b-8c7d-1a2b3c4d5e6f",
    number="ENG-123",
    title="Add CSV export to the reports page",
    body=(
        "Users want to download the monthly report as CSV.\n\n"
        "Acceptance: a *Download CSV* button on /reports."
    ),
    url="https://linear.app/example/issue/ENG-123/add-csv-export-to-the-reports-page",
    scope="ENG",
    author=ADA,
    labeler=ADA,
    installation_id=None,
    extra={
        "action": "update",
        "label_id": TRIGGER_ID,
        "organization_id": "dc844923-f9a4-40a3-825c-dea7747e57d6",
        "webhook_id": "000042e3-d123-4980-b49f-8e140eef9329",
        "team_name": "Engineering",
        "actor_type": "user",
    },
)


def test_fixture_is_a_trigger_with_exact_fields() -> None:
    assert parse(*fixture()) == Trigger(EXPECTED)


def test_trigger_event_survives_the_job_queue_round_trip() -> None:
    decision = parse(*fixture())
    assert isinstance(decision, Trigger)
    assert IssueEvent.from_json(decision.event.to_json()) == decision.event


def test_starlette_headers_are_accepted_by_the_parser() -> None:
    headers, body = fixture()
    assert parse(Headers(headers), body) == Trigger(EXPECTED)


def test_trigger_label_matches_case_insensitively() -> None:
    assert isinstance(parse(*fixture(), label="Delegate-To-Agent"), Trigger)


def test_trigger_label_may_be_configured_as_the_label_id() -> None:
    assert parse(*fixture(), label=TRIGGER_ID) == Trigger(EXPECTED)


def test_other_trigger_label_is_ignored() -> None:
    assert parse(*fixture(), label="needs-triage") == Ignored(
        "update did not add the trigger label"
    )


# ---------------------------------------------------------------------------
# Label-added detection


def test_update_adding_the_label_triggers() -> None:
    decision = parse(*edited(lambda p: set_labels(p, [TRIGGER_ID], [])))
    assert isinstance(decision, Trigger)
    assert decision.event.extra["label_id"] == TRIGGER_ID


def test_update_from_null_labels_counts_as_adding() -> None:
    assert isinstance(parse(*edited(lambda p: set_labels(p, [TRIGGER_ID], None))), Trigger)


def test_update_removing_a_label_is_a_change_naming_the_removed_ids() -> None:
    decision = parse(*edited(lambda p: set_labels(p, [FEATURE_ID], [FEATURE_ID, TRIGGER_ID])))
    assert isinstance(decision, Change) and decision.event.change == "unlabeled"
    assert decision.event.extra["removed_label_ids"] == TRIGGER_ID
    assert decision.event.issue_key == EXPECTED.issue_key and decision.event.actor == ADA


@pytest.mark.parametrize(("state_type", "closes"), [
    ("completed", True), ("canceled", True), ("duplicate", True), ("started", False),
    ("backlog", False),
])
def test_moving_the_issue_to_a_closed_state_is_a_change(state_type: str, closes: bool) -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["updatedFrom"] = {"stateId": "old-state", "updatedAt": "2026-01-15T09:58:02Z"}
        payload["data"]["state"] = {"id": "s", "name": "Done", "type": state_type}

    decision = parse(*edited(change))
    if closes:
        assert isinstance(decision, Change) and decision.event.change == "closed"
    else:
        assert decision == Ignored("update did not change labels")


def linear_comment(body: str, **data_changes: Any) -> tuple[dict[str, str], bytes]:
    def change(payload: dict[str, Any]) -> None:
        payload.update(type="Comment", action="create", updatedFrom=None,
                       url="https://linear.app/example/issue/ENG-123/x#comment-c1")
        payload["data"] = {"id": "c1", "body": body, "issueId": EXPECTED.issue_id,
                           "userId": ADA.id, "user": {"id": ADA.id, "name": ADA.login},
                           "issue": {"id": EXPECTED.issue_id, "identifier": "ENG-123",
                                     "url": "https://linear.app/example/issue/ENG-123/x"},
                           "botActor": None, **data_changes}

    return edited(change)


def test_a_command_comment_on_an_issue_is_a_comment_for_the_agent() -> None:
    decision = parse(*linear_comment("/agent stop"))
    assert isinstance(decision, Comment)
    assert (decision.event.issue_key, decision.event.comment_id, decision.event.author,
            decision.event.number) == (EXPECTED.issue_key, "c1", ADA, "ENG-123")


@pytest.mark.parametrize(("body", "changes", "reason"), [
    ("nice work", {}, "comment is not a command"),
    ("/agent stop", {"botActor": "{\"type\": \"app\"}"}, "comments by apps never run commands"),
    ("/agent stop", {"issueId": None}, "comment is not on an issue"),
])
def test_other_comments_are_ignored(body: str, changes: dict[str, Any], reason: str) -> None:
    assert parse(*linear_comment(body, **changes)) == Ignored(reason)


def test_update_adding_another_label_while_the_trigger_stays_is_ignored() -> None:
    decision = parse(*edited(lambda p: set_labels(p, [FEATURE_ID, TRIGGER_ID], [TRIGGER_ID])))
    assert decision == Ignored("trigger label was already on the issue")


def test_label_renamed_to_the_trigger_name_is_not_an_addition() -> None:
    def change(payload: dict[str, Any]) -> None:
        # The label was on the issue before and after; only its name matches now.
        set_labels(payload, [FEATURE_ID], [FEATURE_ID])
        payload["data"]["labels"][0]["name"] = LABEL

    assert parse(*edited(change)) == Ignored("trigger label was already on the issue")


def test_update_touching_other_fields_only_is_ignored() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["updatedFrom"] = {"title": "Old title", "updatedAt": "2026-01-15T09:58:02.117Z"}

    assert parse(*edited(change)) == Ignored("update did not change labels")


@pytest.mark.parametrize("updated_from", [None, "absent"])
def test_update_without_updated_from_is_ignored(updated_from: Any) -> None:
    def change(payload: dict[str, Any]) -> None:
        if updated_from == "absent":
            del payload["updatedFrom"]
        else:
            payload["updatedFrom"] = None

    assert parse(*edited(change)) == Ignored("update did not change labels")


def test_create_with_the_label_triggers() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["action"] = "create"
        del payload["updatedFrom"]

    decision = parse(*edited(change))
    assert decision == Trigger(
        msgspec.structs.replace(EXPECTED, extra={**EXPECTED.extra, "action": "create"})
    )


def test_create_without_the_label_is_ignored() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["action"] = "create"
        payload["data"]["labelIds"] = [FEATURE_ID]

    assert parse(*edited(change)) == Ignored("issue was created without the trigger label")


def test_label_id_without_a_name_in_labels_does_not_match_by_name() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["data"]["labels"] = [payload["data"]["labels"][0]]

    assert parse(*edited(change)) == Ignored("update did not add the trigger label")


@pytest.mark.parametrize("action", ["remove", "restore"])
def test_known_unused_actions_are_ignored_by_name(action: str) -> None:
    assert parse(*edited(lambda p: p.update(action=action))) == Ignored(
        f"action '{action}' is not handled"
    )


def test_unknown_action_is_ignored_as_unsupported() -> None:
    assert parse(*edited(lambda p: p.update(action="teleport"))) == Ignored(
        "action 'teleport' is not supported"
    )


@pytest.mark.parametrize("kind", ["Reaction", "IssueLabel", "Project", "AgentSessionEvent"])
def test_other_known_types_are_ignored_by_name(kind: str) -> None:
    assert parse(*edited(lambda p: p.update(type=kind))) == Ignored(f"type '{kind}' is not handled")


def test_unknown_type_is_ignored_as_unsupported() -> None:
    assert parse(*edited(lambda p: p.update(type="Spaceship"))) == Ignored(
        "type 'Spaceship' is not supported"
    )


def test_ignored_type_does_not_need_a_well_formed_data() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["type"] = "Reaction"
        payload["data"] = "whatever"

    assert parse(*edited(change)) == Ignored("type 'Reaction' is not handled")


# ---------------------------------------------------------------------------
# Optional fields


def test_issue_without_a_creator_has_no_author() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["data"]["creatorId"] = None
        payload["data"]["creator"] = None

    decision = parse(*edited(change))
    assert isinstance(decision, Trigger)
    assert decision.event.author is None
    assert decision.event.labeler == ADA


def test_creator_without_details_keeps_the_id() -> None:
    decision = parse(*edited(lambda p: p["data"].pop("creator")))
    assert isinstance(decision, Trigger)
    assert decision.event.author == Person(ADA.id, "")


@pytest.mark.parametrize(
    ("actor", "labeler"),
    [
        (None, None),
        ({"id": "int-1", "service": "github", "type": "integration"}, Person("int-1", "")),
        ({"id": "app-1", "name": "Triage", "type": "oauthClient"}, Person("app-1", "Triage")),
        ({"name": "no id"}, None),
    ],
)
def test_actor_shapes(actor: Any, labeler: Person | None) -> None:
    decision = parse(*edited(lambda p: p.update(actor=actor)))
    assert isinstance(decision, Trigger)
    assert decision.event.labeler == labeler
    assert decision.event.author == ADA


def test_null_description_becomes_empty_text() -> None:
    decision = parse(*edited(lambda p: p["data"].update(description=None)))
    assert isinstance(decision, Trigger)
    assert decision.event.body == ""


def test_issue_url_falls_back_to_the_envelope_url() -> None:
    decision = parse(*edited(lambda p: p["data"].pop("url")))
    assert isinstance(decision, Trigger)
    assert decision.event.url == EXPECTED.url


def test_scope_falls_back_to_the_identifier_prefix() -> None:
    decision = parse(*edited(lambda p: p["data"].pop("team")))
    assert isinstance(decision, Trigger)
    assert decision.event.scope == "ENG"
    assert "team_name" not in decision.event.extra


# ---------------------------------------------------------------------------
# Malformed deliveries (edited copies signed with the fixture secret)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"this is not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "JSON array, not an object"),
        (b'"text"', "JSON string, not an object"),
        (b"null", "JSON null, not an object"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_undecodable_bodies_are_malformed(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse(*resigned(body))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("type",), "type is missing"),
        (("action",), "action is missing"),
        (("data",), "data is missing"),
        (("data", "id"), r"data\.id is missing"),
        (("data", "identifier"), r"data\.identifier is missing"),
        (("data", "title"), r"data\.title is missing"),
        (("data", "labelIds"), r"data\.labelIds is missing"),
    ],
)
def test_missing_required_fields_are_malformed(path: tuple[str, ...], message: str) -> None:
    def change(payload: dict[str, Any]) -> None:
        target = payload
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    with pytest.raises(MalformedPayload, match=message):
        parse(*edited(change))


def test_missing_both_urls_is_malformed() -> None:
    def change(payload: dict[str, Any]) -> None:
        del payload["data"]["url"]
        del payload["url"]

    with pytest.raises(MalformedPayload, match=r"data\.url is missing"):
        parse(*edited(change))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(type=7), "type is a JSON number"),
        (lambda p: p.update(action=["update"]), "action is a JSON array"),
        (lambda p: p.update(data=[]), "data is a JSON array, expected an object"),
        (lambda p: p.update(updatedFrom="x"), "updatedFrom is a JSON string"),
        (lambda p: p["data"].update(labelIds="x"), r"data\.labelIds is a JSON string"),
        (lambda p: p["data"].update(labelIds=[1]), r"data\.labelIds\[\] is a JSON number"),
        (lambda p: p["updatedFrom"].update(labelIds={}), r"updatedFrom\.labelIds is a JSON obj"),
        (lambda p: p["data"].update(labels="x"), r"data\.labels is a JSON string"),
        (lambda p: p["data"].update(labels=["x"]), r"data\.labels\[\] is a JSON string"),
        (lambda p: p["data"].update(id=5), r"data\.id is a JSON number"),
        (lambda p: p["data"].update(title=True), r"data\.title is a boolean"),
        (lambda p: p["data"].update(description=5), r"data\.description is a JSON number"),
        (lambda p: p["data"].update(creatorId=5), r"data\.creatorId is a JSON number"),
        (lambda p: p["data"].update(team="ENG"), r"data\.team is a JSON string"),
        (lambda p: p.update(actor="Ada"), "actor is a JSON string"),
    ],
)
def test_wrongly_typed_fields_are_malformed(change: Any, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse(*edited(change))


def test_no_team_and_no_identifier_prefix_is_malformed() -> None:
    def change(payload: dict[str, Any]) -> None:
        payload["data"]["team"] = None
        payload["data"]["identifier"] = "123"

    with pytest.raises(MalformedPayload, match=r"data\.team\.key is missing"):
        parse(*edited(change))


def test_missing_delivery_header_is_malformed() -> None:
    headers, body = fixture()
    del headers["Linear-Delivery"]
    with pytest.raises(MalformedPayload, match="missing Linear-Delivery"):
        parse(headers, body)


def test_absurd_delivery_id_is_malformed() -> None:
    headers, body = fixture()
    headers["Linear-Delivery"] = "x" * 500
    with pytest.raises(MalformedPayload, match="not a delivery id"):
        parse(headers, body)


def test_missing_event_header_is_not_needed() -> None:
    headers, body = fixture()
    del headers["Linear-Event"]
    assert parse(headers, body) == Trigger(EXPECTED)
