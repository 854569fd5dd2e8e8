"""A fake of Linear's GraphQL API for the operations the bridge uses, behaving like Linear.

Serve it with ``tests.fakes.server.serve_in_thread(fake)`` (the instance is an
ASGI app answering ``POST /graphql``) and point ``LinearClient`` at
``f"{base_url}/graphql"``::

    fake = FakeLinear()                       # knows issue ENG-123 of the shared fixture
    with serve_in_thread(fake) as base_url:
        client = LinearClient(f"{base_url}/graphql", DEFAULT_API_KEY, http=http)
        ...
    assert [c["body"] for c in fake.comments(FIXTURE_ISSUE_ID)] == [...]

What it does like Linear:

- ``Authorization``: a personal API key sent raw, or an OAuth token sent as
  ``Bearer <token>``, checked against the configured credentials; anything
  else gets Linear's ``AUTHENTICATION_ERROR`` (HTTP 400, ``statusCode: 401``);
- the request is parsed as GraphQL by a small documented matcher (below) and
  VALIDATED against a schema subset: unknown fields or arguments, missing
  required arguments or variables, undeclared or unused variables, wrong
  variable types, a selection on a leaf or none on an object, all answer
  HTTP 400 with graphql-js's messages (``GRAPHQL_VALIDATION_FAILED``);
- ``viewer``; ``issue(id)`` by uuid or identifier with ``comments(first,
  after)`` (ascending by creation, cursor = comment id, ``first`` ≤ 250,
  default 50) and ``pageInfo``; ``commentCreate(input: {issueId, body, id?})``
  and ``commentUpdate(id, input: {body})`` returning ``CommentPayload``; a
  missing issue or comment is ``Entity not found: Issue|Comment`` with HTTP
  200, ``data: null`` (``INPUT_ERROR``);
- rate-limit headers on every response (``X-RateLimit-Requests-*`` with the
  reset in epoch ms, ``X-Complexity``, ``X-RateLimit-Complexity-*``) counted
  per credential; when the hourly request budget is spent, ``RATELIMITED``
  with HTTP 400 and ``extensions.statusCode: 429``, as observed from Linear.

GraphQL subset understood (anything else is a syntax or validation error):
one operation per document (``query``/``mutation``, optional name, variable
definitions with defaults), fields with aliases and arguments, values
(variables, strings, block strings, numbers, booleans, null, enums, lists,
input objects) and ``__typename``. Fragments, directives and subscriptions are
refused. Complexity is estimated (0.1 per scalar, 1 per object, connections
multiplied by ``first``) for the headers only; it is not enforced.

Test controls: ``fail_next`` (answer the next call(s) of an operation with an
error, before or after acting), ``fail_ratelimited``, ``delay_next``; set-up
``add_issue``, ``add_comment``, ``delete_comment``, ``add_api_key``,
``add_oauth_token``, ``revoke``; accessors ``comments(issue_id)``,
``requests`` (operation names, never a credential) and ``calls`` (operation
names with their variables), ``reactions(comment_id)``. An operation is named by
its root field: ``viewer``, ``issue``, ``commentCreate``, ``commentUpdate``,
``reactionCreate`` (one reaction per user and emoji). All state is
guarded by one ``threading.Lock`` because the app runs on a uvicorn thread.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import itertools
import json
import math
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

DEFAULT_API_KEY = "lin_api_fakeKeyForTests0000000000000000000000"  # a test credential
DEFAULT_OAUTH_TOKEN = "lin_oauth_fakeTokenForTests000000000000000000"  # a test credential
DEFAULT_USER = "Coder Bridge"
FIXTURE_ISSUE_ID = "9b2f6c1d-3e4a-4f5b-8c7d-1a2b3c4d5e6f"
FIXTURE_IDENTIFIER = "ENG-123"
ORGANIZATION_KEY = "example"
ORGANIZATION_ID = "dc844923-f9a4-40a3-825c-dea7747e57d6"  # the fixture's organizationId
MAX_FIRST = 250
DEFAULT_FIRST = 50
OPERATIONS = ("viewer", "issue", "commentCreate", "commentUpdate", "reactionCreate")

Identity = str  # the user id a credential acts as
Json = dict[str, Any]


# ---------------------------------------------------------------------------
# Linear-shaped errors


def linear_error(
    message: str,
    *,
    code: str,
    kind: str,
    status_code: int,
    user_message: str | None = None,
    path: list[str] | None = None,
) -> Json:
    """One entry of ``errors[]`` shaped like Linear's (``extensions.code``/``type``...)."""
    extensions: Json = {"type": kind, "code": code, "statusCode": status_code, "userError": True}
    if user_message is not None:
        extensions["userPresentableMessage"] = user_message
    error: Json = {"message": message, "extensions": extensions}
    if path is not None:
        error["path"] = path
    return error


def auth_error() -> Json:
    """Linear's answer to a missing or unknown credential."""
    return linear_error(
        "Authentication required, not authenticated",
        code="AUTHENTICATION_ERROR",
        kind="authentication error",
        status_code=401,
        user_message="You need to authenticate to access this operation.",
    )


def ratelimited_error() -> Json:
    """Linear's answer when the request budget is spent."""
    return linear_error(
        "Rate limit exceeded",
        code="RATELIMITED",
        kind="ratelimited",
        status_code=429,
        user_message="Too many requests, please slow down.",
    )


def not_found_error(entity: str, path: str) -> Json:
    """Linear's ``Entity not found`` resolver error."""
    return linear_error(
        f"Entity not found: {entity}",
        code="INPUT_ERROR",
        kind="invalid input",
        status_code=400,
        user_message=f"Could not find referenced {entity}.",
        path=[path],
    )


def input_error(message: str, path: str) -> Json:
    """Linear's ``Argument Validation Error`` resolver error."""
    return linear_error(
        "Argument Validation Error",
        code="INPUT_ERROR",
        kind="invalid input",
        status_code=400,
        user_message=message,
        path=[path],
    )


def validation_error(message: str) -> Json:
    """A GraphQL document or variable that does not validate (graphql-js wording)."""
    return linear_error(
        message, code="GRAPHQL_VALIDATION_FAILED", kind="graphql error", status_code=400
    )


_DEFAULT_FAILURES: dict[int, Json] = {
    400: input_error("Invalid input.", "operation"),
    401: auth_error(),
    403: linear_error(
        "Forbidden", code="FORBIDDEN", kind="forbidden", status_code=403,
        user_message="You don't have permission to do this.",
    ),
    500: linear_error(
        "Internal server error", code="INTERNAL_SERVER_ERROR", kind="internal error",
        status_code=500,
    ),
}


class GraphQLError(Exception):
    """A request that fails as a whole: ``errors`` answered with HTTP ``status``."""

    def __init__(self, errors: list[Json], status: int = 400) -> None:
        super().__init__(errors[0]["message"] if errors else "error")
        self.errors = errors
        self.status = status


def _invalid(message: str) -> GraphQLError:
    raise GraphQLError([validation_error(message)])


# ---------------------------------------------------------------------------
# The GraphQL matcher: tokens → one operation → validated against _SCHEMA

_TOKEN_RE = re.compile(
    r"""
    (?P<skip>[\s,\ufeff]+|\#[^\n\r]*)
  | (?P<spread>\.\.\.)
  | (?P<punct>[!$&()\:=@\[\]{}|])
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<block>\"\"\"(?:\\\"\"\"|[^"]|"(?!""))*\"\"\")
  | (?P<string>"(?:\\.|[^"\\\n\r])*")
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # punct, name, number, string, spread, end
    text: str


@dataclass(frozen=True)
class _Var:
    """A ``$name`` reference inside an argument value."""

    name: str


@dataclass
class _VarDef:
    type: str  # e.g. "String!", "[String!]"
    default: Any = None
    has_default: bool = False


@dataclass
class _Field:
    name: str
    alias: str | None
    args: dict[str, Any]
    selections: list[_Field] | None

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass
class Operation:
    """A parsed operation: ``kind`` (query/mutation), optional ``name``, variables, fields."""

    kind: str
    name: str | None
    variables: dict[str, _VarDef]
    selections: list[_Field]

    @property
    def root_fields(self) -> list[str]:
        return [f.name for f in self.selections]


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN_RE.match(text, position)
        if match is None:
            raise GraphQLError(
                [_syntax(f'Unexpected character: "{text[position]}".')]
            )
        position = match.end()
        kind = match.lastgroup or "skip"
        if kind != "skip":
            tokens.append(_Token(kind, match.group()))
    tokens.append(_Token("end", "<EOF>"))
    return tokens


def _syntax(message: str) -> Json:
    return linear_error(
        f"Syntax Error: {message}", code="GRAPHQL_PARSE_FAILED", kind="graphql error",
        status_code=400,
    )


class _Parser:
    """Recursive descent over the GraphQL subset described in the module docstring."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self, kind: str | None = None, text: str | None = None) -> _Token:
        token = self.peek()
        if (kind is not None and token.kind != kind) or (text is not None and token.text != text):
            wanted = f'"{text}"' if text else (kind or "token")
            raise GraphQLError([_syntax(f'Expected {wanted}, found "{token.text}".')])
        self.index += 1
        return token

    def accept(self, text: str) -> bool:
        if self.peek().text == text and self.peek().kind in ("punct", "name", "spread"):
            self.index += 1
            return True
        return False

    def document(self) -> Operation:
        operation = self.operation()
        if self.peek().kind != "end":
            token = self.peek()
            if token.text in ("query", "mutation", "fragment", "subscription", "{"):
                raise _invalid("This fake accepts exactly one operation per document.")
            raise GraphQLError([_syntax(f'Unexpected "{token.text}".')])
        return operation

    def operation(self) -> Operation:
        token = self.peek()
        if token.text == "{":
            return Operation("query", None, {}, self.selection_set())
        if token.kind == "name" and token.text == "fragment":
            raise _invalid("Fragments are not supported by this fake.")
        if token.kind != "name" or token.text not in ("query", "mutation", "subscription"):
            raise GraphQLError([_syntax(f'Unexpected "{token.text}".')])
        kind = self.take().text
        name = self.take("name").text if self.peek().kind == "name" else None
        variables = self.variable_definitions()
        self.no_directives()
        return Operation(kind, name, variables, self.selection_set())

    def variable_definitions(self) -> dict[str, _VarDef]:
        definitions: dict[str, _VarDef] = {}
        if not self.accept("("):
            return definitions
        while not self.accept(")"):
            self.take("punct", "$")
            name = self.take("name").text
            self.take("punct", ":")
            definition = _VarDef(self.type_reference())
            if self.accept("="):
                definition.default, definition.has_default = self.value(const=True), True
            if name in definitions:
                raise _invalid(f'There can be only one variable named "${name}".')
            definitions[name] = definition
        return definitions

    def type_reference(self) -> str:
        if self.accept("["):
            inner = self.type_reference()
            self.take("punct", "]")
            text = f"[{inner}]"
        else:
            text = self.take("name").text
        return text + "!" if self.accept("!") else text

    def no_directives(self) -> None:
        if self.peek().text == "@":
            raise _invalid("Directives are not supported by this fake.")

    def selection_set(self) -> list[_Field]:
        self.take("punct", "{")
        fields: list[_Field] = []
        while not self.accept("}"):
            if self.peek().kind == "spread":
                raise _invalid("Fragments are not supported by this fake.")
            fields.append(self.field())
        if not fields:
            raise GraphQLError([_syntax('Expected Name, found "}".')])
        return fields

    def field(self) -> _Field:
        name = self.take("name").text
        alias = None
        if self.accept(":"):
            alias, name = name, self.take("name").text
        args = self.arguments()
        self.no_directives()
        selections = self.selection_set() if self.peek().text == "{" else None
        return _Field(name, alias, args, selections)

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if not self.accept("("):
            return args
        while not self.accept(")"):
            name = self.take("name").text
            self.take("punct", ":")
            if name in args:
                raise _invalid(f'There can be only one argument named "{name}".')
            args[name] = self.value(const=False)
        return args

    def value(self, *, const: bool) -> Any:
        token = self.take()
        if token.kind == "punct" and token.text == "$" and not const:
            return _Var(self.take("name").text)
        if token.kind == "number":
            return float(token.text) if re.search(r"[.eE]", token.text) else int(token.text)
        if token.kind == "string":
            return json.loads(token.text)
        if token.kind == "block":
            return token.text[3:-3].replace('\\"""', '"""')
        if token.kind == "name":
            return {"true": True, "false": False, "null": None}.get(token.text, token.text)
        if token.text == "[":
            items = []
            while not self.accept("]"):
                items.append(self.value(const=const))
            return items
        if token.text == "{":
            fields: dict[str, Any] = {}
            while not self.accept("}"):
                key = self.take("name").text
                self.take("punct", ":")
                fields[key] = self.value(const=const)
            return fields
        raise GraphQLError([_syntax(f'Unexpected "{token.text}".')])


def parse_operation(query: str) -> Operation:
    """Parse one GraphQL operation; ``GraphQLError`` (HTTP 400) if outside the subset."""
    return _Parser(query).document()


# -- the schema subset ---------------------------------------------------------


@dataclass(frozen=True)
class _FieldDef:
    type: str
    args: Mapping[str, str] = field(default_factory=dict)


_SCALARS = frozenset({"String", "ID", "Int", "Float", "Boolean", "DateTime", "JSON", "JSONObject"})
_CONNECTION_ARGS = {"first": "Int", "after": "String", "last": "Int", "before": "String",
                    "includeArchived": "Boolean"}

_SCHEMA: dict[str, dict[str, _FieldDef]] = {
    "Query": {
        "viewer": _FieldDef("User!"),
        "issue": _FieldDef("Issue!", {"id": "String!"}),
        "issues": _FieldDef("IssueConnection!", {**_CONNECTION_ARGS, "filter": "IssueFilter",
                                                 "orderBy": "PaginationOrderBy"}),
    },
    "Mutation": {
        "commentCreate": _FieldDef("CommentPayload!", {"input": "CommentCreateInput!"}),
        "commentUpdate": _FieldDef(
            "CommentPayload!", {"id": "String!", "input": "CommentUpdateInput!"}
        ),
        "reactionCreate": _FieldDef("ReactionPayload!", {"input": "ReactionCreateInput!"}),
    },
    "ReactionPayload": {name: _FieldDef(kind) for name, kind in [
        ("success", "Boolean!"), ("lastSyncId", "Float!"), ("reaction", "Reaction!"),
    ]},
    "Reaction": {name: _FieldDef(kind) for name, kind in [
        ("id", "ID!"), ("emoji", "String!"), ("user", "User"),
    ]},
    "User": {name: _FieldDef(kind) for name, kind in [
        ("id", "ID!"), ("name", "String!"), ("displayName", "String!"), ("email", "String!"),
        ("active", "Boolean!"), ("app", "Boolean!"), ("url", "String!"),
        ("organization", "Organization!"),
    ]},
    "Organization": {name: _FieldDef(kind) for name, kind in [
        ("id", "ID!"), ("name", "String!"), ("urlKey", "String!"),
    ]},
    "Issue": {
        **{name: _FieldDef(kind) for name, kind in [
            ("id", "ID!"), ("identifier", "String!"), ("title", "String!"), ("url", "String!"),
            ("number", "Float!"), ("description", "String"), ("createdAt", "DateTime!"),
            ("updatedAt", "DateTime!"), ("creator", "User"), ("team", "Team!"),
            ("state", "WorkflowState!"),
        ]},
        "comments": _FieldDef("CommentConnection!", _CONNECTION_ARGS),
        "labels": _FieldDef("IssueLabelConnection!", _CONNECTION_ARGS),
        "history": _FieldDef("IssueHistoryConnection!", _CONNECTION_ARGS),
    },
    "IssueConnection": {
        "nodes": _FieldDef("[Issue!]!"),
        "pageInfo": _FieldDef("PageInfo!"),
    },
    "Team": {name: _FieldDef(kind) for name, kind in [
        ("id", "ID!"), ("key", "String!"), ("name", "String!"),
    ]},
    "WorkflowState": {name: _FieldDef(kind) for name, kind in [
        ("id", "ID!"), ("name", "String!"), ("type", "String!"),
    ]},
    "IssueLabelConnection": {"nodes": _FieldDef("[IssueLabel!]!")},
    "IssueLabel": {name: _FieldDef(kind) for name, kind in [("id", "ID!"), ("name", "String!")]},
    "IssueHistoryConnection": {"nodes": _FieldDef("[IssueHistory!]!")},
    "IssueHistory": {
        **{name: _FieldDef(kind) for name, kind in [
            ("id", "ID!"), ("createdAt", "DateTime!"), ("addedLabelIds", "[String!]"),
            ("removedLabelIds", "[String!]"),
        ]},
        "actor": _FieldDef("User"),
    },
    "CommentConnection": {
        "nodes": _FieldDef("[Comment!]!"),
        "pageInfo": _FieldDef("PageInfo!"),
    },
    "PageInfo": {name: _FieldDef(kind) for name, kind in [
        ("hasNextPage", "Boolean!"), ("hasPreviousPage", "Boolean!"),
        ("startCursor", "String"), ("endCursor", "String"),
    ]},
    "Comment": {name: _FieldDef(kind) for name, kind in [
        ("id", "ID!"), ("body", "String!"), ("url", "String!"), ("createdAt", "DateTime!"),
        ("updatedAt", "DateTime!"), ("editedAt", "DateTime"), ("issueId", "String"),
        ("user", "User"),
    ]},
    "CommentPayload": {name: _FieldDef(kind) for name, kind in [
        ("success", "Boolean!"), ("lastSyncId", "Float!"), ("comment", "Comment!"),
    ]},
}

_INPUTS: dict[str, dict[str, str]] = {
    "CommentCreateInput": {
        "id": "String", "issueId": "String", "body": "String", "bodyData": "JSON",
        "parentId": "String", "doNotSubscribeToIssue": "Boolean", "createAsUser": "String",
        "displayIconUrl": "String",
    },
    "CommentUpdateInput": {
        "body": "String", "bodyData": "JSON", "doNotSubscribeToIssue": "Boolean",
    },
    # Filters are checked by field name only; the resolver reads the comparators it knows.
    "IssueFilter": {"labels": "JSON", "updatedAt": "JSON", "state": "JSON", "team": "JSON"},
    "ReactionCreateInput": {
        "id": "String", "emoji": "String!", "commentId": "String", "issueId": "String",
        "projectUpdateId": "String", "initiativeUpdateId": "String",
    },
}


def _named(type_text: str) -> str:
    return type_text.strip("[]!")


class _Validator:
    """graphql-js-style validation of one operation plus coercion of its variables."""

    def __init__(self, operation: Operation, variables: Json) -> None:
        self.operation = operation
        self.raw_variables = variables
        self.used: set[str] = set()

    def run(self) -> Json:
        """The coerced variables; raises ``GraphQLError`` with every problem found."""
        if self.operation.kind == "subscription":
            raise _invalid("Subscriptions are not supported by this fake.")
        root = "Query" if self.operation.kind == "query" else "Mutation"
        problems = self.selections(self.operation.selections, root)
        for name in self.operation.variables:
            if name not in self.used:
                where = f' in operation "{self.operation.name}"' if self.operation.name else ""
                problems.append(f'Variable "${name}" is never used{where}.')
        for definition in self.operation.variables.values():
            if _named(definition.type) not in _SCALARS | set(_INPUTS):
                problems.append(f'Unknown type "{_named(definition.type)}".')
        if problems:
            raise GraphQLError([validation_error(p) for p in problems])
        variables = self.coerce_variables()
        problems = _argument_problems(self.operation.selections, root, variables)
        if problems:
            raise GraphQLError([validation_error(p) for p in problems])
        return variables

    def selections(self, fields: list[_Field], parent: str) -> list[str]:
        problems: list[str] = []
        for selected in fields:
            problems += self.field(selected, parent)
        return problems

    def field(self, selected: _Field, parent: str) -> list[str]:
        if selected.name == "__typename":
            return [] if selected.selections is None else [
                'Field "__typename" must not have a selection since type "String!" has no '
                "subfields."
            ]
        definition = _SCHEMA[parent].get(selected.name)
        if definition is None:
            return [f'Cannot query field "{selected.name}" on type "{parent}".']
        problems = self.arguments(selected, parent, definition)
        named = _named(definition.type)
        if named in _SCALARS and selected.selections is not None:
            problems.append(
                f'Field "{selected.name}" must not have a selection since type '
                f'"{definition.type}" has no subfields.'
            )
        elif named not in _SCALARS and selected.selections is None:
            problems.append(
                f'Field "{selected.name}" of type "{definition.type}" must have a selection of '
                f'subfields. Did you mean "{selected.name} {{ ... }}"?'
            )
        elif selected.selections is not None:
            problems += self.selections(selected.selections, named)
        return problems

    def arguments(self, selected: _Field, parent: str, definition: _FieldDef) -> list[str]:
        problems = [
            f'Unknown argument "{arg}" on field "{parent}.{selected.name}".'
            for arg in selected.args
            if arg not in definition.args
        ]
        for arg, arg_type in definition.args.items():
            if arg_type.endswith("!") and arg not in selected.args:
                problems.append(
                    f'Field "{selected.name}" argument "{arg}" of type "{arg_type}" is required, '
                    "but it was not provided."
                )
            elif arg in selected.args:
                problems += self.value(selected.args[arg], arg_type)
        return problems

    def value(self, value: Any, expected: str) -> list[str]:
        """Check variable uses inside an argument value (literals are coerced later)."""
        if isinstance(value, _Var):
            return self.variable_use(value.name, expected)
        if isinstance(value, dict):
            fields = _INPUTS.get(_named(expected), {})
            problems = []
            for key, item in value.items():
                problems += self.value(item, fields.get(key, "JSON"))
            return problems
        if isinstance(value, list):
            return [p for item in value for p in self.value(item, _named(expected))]
        return []

    def variable_use(self, name: str, expected: str) -> list[str]:
        self.used.add(name)
        definition = self.operation.variables.get(name)
        if definition is None:
            return [f'Variable "${name}" is not defined.']
        declared = definition.type
        nullable_ok = declared.endswith("!") or definition.has_default
        if _named(declared) != _named(expected) or (expected.endswith("!") and not nullable_ok):
            return [
                f'Variable "${name}" of type "{declared}" used in position expecting type '
                f'"{expected}".'
            ]
        return []

    def coerce_variables(self) -> Json:
        values: Json = {}
        errors: list[Json] = []
        for name, definition in self.operation.variables.items():
            if name in self.raw_variables:
                raw = self.raw_variables[name]
            elif definition.has_default:
                raw = definition.default
            else:
                raw = None
                if definition.type.endswith("!"):
                    errors.append(_variable_error(
                        f'Variable "${name}" of required type "{definition.type}" was not '
                        "provided."
                    ))
                    continue
            problem = _coerce_problem(raw, definition.type)
            if problem is not None:
                errors.append(_variable_error(
                    f'Variable "${name}" got invalid value {json.dumps(raw)}; {problem}'
                ))
            values[name] = raw
        if errors:
            raise GraphQLError(errors)
        return values


def _argument_problems(fields: list[_Field], parent: str, variables: Json) -> list[str]:
    """Argument values (literals and substituted variables) that do not fit their types."""
    problems: list[str] = []
    for selected in fields:
        definition = _SCHEMA[parent].get(selected.name)
        if definition is None:
            continue  # __typename
        for name, value in _resolve_args(selected.args, variables).items():
            problem = _coerce_problem(value, definition.args[name])
            if problem is not None:
                problems.append(
                    f'Argument "{name}" on field "{parent}.{selected.name}" has invalid value '
                    f"{json.dumps(value)}. {problem}"
                )
        if selected.selections is not None:
            problems += _argument_problems(
                selected.selections, _named(definition.type), variables
            )
    return problems


def _variable_error(message: str) -> Json:
    return linear_error(message, code="BAD_USER_INPUT", kind="graphql error", status_code=400)


def _coerce_problem(value: Any, type_text: str) -> str | None:
    """Why ``value`` is not of GraphQL type ``type_text``, or ``None`` if it is."""
    if value is None:
        return f'Expected non-nullable type "{type_text}" not to be null.' if (
            type_text.endswith("!")
        ) else None
    inner = type_text[:-1] if type_text.endswith("!") else type_text
    if inner.startswith("["):
        if not isinstance(value, list):
            return f'Expected type "{inner}" to be a list.'
        return next((p for v in value if (p := _coerce_problem(v, inner[1:-1]))), None)
    if inner in _INPUTS:
        return _input_problem(value, inner)
    checks: dict[str, Callable[[Any], bool]] = {
        "String": lambda v: isinstance(v, str),
        "ID": lambda v: isinstance(v, str | int) and not isinstance(v, bool),
        "DateTime": lambda v: isinstance(v, str),
        "Int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31,
        "Float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "Boolean": lambda v: isinstance(v, bool),
    }
    check = checks.get(inner)
    if check is not None and not check(value):
        return f'{inner} cannot represent value: {json.dumps(value)}'
    return None


def _input_problem(value: Any, type_name: str) -> str | None:
    if not isinstance(value, dict):
        return f'Expected type "{type_name}" to be an object.'
    fields = _INPUTS[type_name]
    for key, item in value.items():
        if key not in fields:
            return f'Field "{key}" is not defined by type "{type_name}".'
        problem = _coerce_problem(item, fields[key])
        if problem is not None:
            return f'At "{key}": {problem}'
    return None


def _resolve_args(args: dict[str, Any], variables: Json) -> Json:
    """Argument values with variables substituted (validated and coerced already)."""

    def resolve(value: Any) -> Any:
        if isinstance(value, _Var):
            return variables.get(value.name)
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    return {name: resolve(value) for name, value in args.items()}


def estimate_complexity(fields: Iterable[_Field], variables: Json, parent: str = "Query") -> int:
    """Linear's documented estimate: 0.1 per scalar, 1 per object, connections times ``first``."""

    def cost(selected: list[_Field], type_name: str) -> float:
        total = 0.0
        for item in selected:
            definition = _SCHEMA.get(type_name, {}).get(item.name)
            if definition is None or item.selections is None:
                total += 0.1
                continue
            child = _named(definition.type)
            children = cost(item.selections, child)
            if child.endswith("Connection"):
                first = _resolve_args(item.args, variables).get("first")
                children *= first if isinstance(first, int) else DEFAULT_FIRST
            total += 1 + children
        return total

    return max(1, math.ceil(cost(list(fields), parent)))


# ---------------------------------------------------------------------------
# The fake


@dataclass
class _Injection:
    status: int
    headers: dict[str, str]
    body: Any
    after_acting: bool
    times: int


@dataclass
class _Issue:
    id: str
    identifier: str
    title: str
    created_at: str = "2026-01-15T09:58:02.117Z"
    updated_at: str = "2026-01-15T10:21:33.412Z"
    creator: str | None = None
    team: str = "ENG"
    state_type: str = "unstarted"
    labels: list[tuple[str, str]] = field(default_factory=list)
    history: list[Json] = field(default_factory=list)
    description: str = ""


@dataclass
class _Comment:
    id: str
    issue_id: str
    user_id: str
    body: str
    created_at: str
    updated_at: str
    edited_at: str | None = None


@dataclass
class _Bucket:
    requests: int = 0
    complexity: int = 0
    reset_ms: int = 0


@dataclass
class _Call:
    operation: str
    variables: Json


class FakeLinear:
    """In-memory Linear GraphQL API (viewer, issue comments, comment mutations) as an ASGI app.

    ``api_keys`` / ``oauth_tokens`` map accepted credentials to the display name
    of the user they act as (default: ``DEFAULT_API_KEY`` and
    ``DEFAULT_OAUTH_TOKEN`` → ``DEFAULT_USER``). ``issues`` lists ``(uuid,
    identifier)`` pairs that exist (default: the shared fixture's ENG-123).
    ``rate_limit`` is the hourly request budget per user; ``complexity_limit``
    the reported complexity budget; ``clock`` (Unix seconds) drives the resets
    and timestamps.
    """

    def __init__(
        self,
        *,
        api_keys: Mapping[str, str] | None = None,
        oauth_tokens: Mapping[str, str] | None = None,
        issues: Iterable[tuple[str, str]] = ((FIXTURE_ISSUE_ID, FIXTURE_IDENTIFIER),),
        rate_limit: int = 1500,
        complexity_limit: int = 250_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.rate_limit = rate_limit
        self.complexity_limit = complexity_limit
        self._api_keys: dict[str, Identity] = {}
        self._oauth_tokens: dict[str, Identity] = {}
        self._users: dict[Identity, Json] = {}
        self._issues: dict[str, _Issue] = {}
        self._comments: dict[str, _Comment] = {}
        self._order = itertools.count()
        self._positions: dict[str, int] = {}
        self._sync_ids = itertools.count(100_000)
        self._buckets: dict[Identity, _Bucket] = defaultdict(_Bucket)
        self._failures: dict[str, deque[_Injection]] = defaultdict(deque)
        self._delays: dict[str, deque[float]] = defaultdict(deque)
        self._calls: list[_Call] = []
        self._reactions: dict[str, list[Json]] = defaultdict(list)
        self._fixed_ids: dict[str, str] = {}
        self._oauth_apps: dict[str, str] = {}
        self._oauth_codes: dict[str, Json] = {}
        #: Who is signed in to Linear in the browser (the OAuth flow approves as them).
        self.browser_user = "Ada Lovelace"
        default = {DEFAULT_API_KEY: DEFAULT_USER}
        for key, name in (api_keys if api_keys is not None else default).items():
            self.add_api_key(key, name)
        tokens = oauth_tokens if oauth_tokens is not None else {DEFAULT_OAUTH_TOKEN: DEFAULT_USER}
        for token, name in tokens.items():
            self.add_oauth_token(token, name)
        for issue_id, identifier in issues:
            self.add_issue(issue_id, identifier)
        self.app = Starlette(routes=[
            Route("/graphql", self._handle, methods=["POST"]),
            Route("/oauth/authorize", self._oauth_authorize, methods=["GET"]),
            Route("/oauth/token", self._oauth_token, methods=["POST"]),
            Route("/oauth/revoke", self._oauth_revoke, methods=["POST"]),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # -- set-up and accessors -------------------------------------------------

    def add_api_key(self, key: str, name: str = DEFAULT_USER) -> None:
        """Accept personal API key ``key`` (sent raw) acting as user ``name``."""
        with self._lock:
            self._api_keys[key] = self._user(name)

    def add_oauth_token(self, token: str, name: str = DEFAULT_USER) -> None:
        """Accept OAuth access token ``token`` (sent as ``Bearer``) acting as user ``name``."""
        with self._lock:
            self._oauth_tokens[token] = self._user(name)

    def revoke(self, credential: str) -> None:
        """Refuse an API key or OAuth token from now on."""
        with self._lock:
            self._api_keys.pop(credential, None)
            self._oauth_tokens.pop(credential, None)

    def add_issue(self, issue_id: str, identifier: str, title: str = "An issue") -> None:
        """Make an issue exist (look-ups work by ``issue_id`` or ``identifier``)."""
        with self._lock:
            self._issues[issue_id] = _Issue(issue_id, identifier, title)

    def add_comment(self, issue_id: str, body: str, *, user: str = "Someone Else") -> str:
        """Seed a comment by ``user`` on an existing issue; returns its id."""
        with self._lock:
            issue = self._find_issue(issue_id)
            if issue is None:
                raise KeyError(f"issue {issue_id} does not exist")
            return self._insert(issue, body, self._user(user), None).id

    def delete_comment(self, comment_id: str) -> None:
        """Delete a comment (later updates of it are ``Entity not found: Comment``)."""
        with self._lock:
            del self._comments[comment_id]

    def add_labelled_issue(self, issue_id: str, identifier: str, *, creator: str,
                           labeler: str, label: tuple[str, str], updated_at: str,
                           team: str = "ENG", title: str = "A missed issue",
                           state_type: str = "unstarted") -> None:
        """An issue carrying ``label`` (id, name), created by user ``creator`` and labelled
        by ``labeler`` (user names), as if its webhook had never been sent."""
        with self._lock:
            self._issues[issue_id] = _Issue(
                issue_id, identifier, title, updated_at=updated_at,
                creator=self._user(creator), team=team, state_type=state_type,
                labels=[label], description=f"{title}: the body.",
                history=[{"id": uuid.uuid4().hex, "createdAt": updated_at,
                          "addedLabelIds": [label[0]], "removedLabelIds": [],
                          "actorId": self._user(labeler)}])

    def add_user(self, name: str, user_id: str) -> None:
        """A user with a fixed id (e.g. a fixture's creator), for sign-in."""
        with self._lock:
            self._fixed_ids[name] = user_id
            self._users.pop(user_id, None)
            self._user(name)

    def configure_oauth(self, client_id: str, client_secret: str) -> None:
        """Register an OAuth application (reference oauth.md §3)."""
        with self._lock:
            self._oauth_apps[client_id] = client_secret

    async def _oauth_authorize(self, request: Request) -> Response:
        """Approves at once as ``browser_user``."""
        q = request.query_params
        with self._lock:
            if q.get("client_id") not in self._oauth_apps or q.get("response_type") != "code":
                return Response("Invalid client", status_code=400)
            code = uuid.uuid4().hex
            self._oauth_codes[code] = {"redirect_uri": q.get("redirect_uri"),
                                       "challenge": q.get("code_challenge"),
                                       "client_id": q.get("client_id"),
                                       "user": self._user(self.browser_user)}
        query = urlencode({"code": code, "state": q.get("state", "")})
        return RedirectResponse(f"{q.get('redirect_uri')}?{query}", status_code=302)

    async def _oauth_token(self, request: Request) -> Response:
        """Form-encoded only; 400 ``{"error", "error_description"}`` when refused."""
        if not request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            return JSONResponse({"error": "invalid_request",
                                 "error_description": "Unsupported content type"}, 400)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        with self._lock:
            grant = self._oauth_codes.pop(form.get("code", ""), None)
            secret = self._oauth_apps.get(form.get("client_id", ""))

            def refuse(error: str, text: str, status: int = 400) -> Response:
                return JSONResponse({"error": error, "error_description": text}, status)

            if secret is None or secret != form.get("client_secret"):
                return refuse("invalid_client", "Client authentication failed", 401)
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                return refuse("invalid_grant", "Invalid authorization code")
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            if grant["challenge"] and grant["challenge"] != base64.urlsafe_b64encode(
                    digest).rstrip(b"=").decode():
                return refuse("invalid_grant", "Invalid code verifier")
            token = "lin_oauth_" + uuid.uuid4().hex
            self._oauth_tokens[token] = grant["user"]
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": 86399, "scope": "read",
                             "refresh_token": "lin_refresh_" + uuid.uuid4().hex})

    async def _oauth_revoke(self, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        token = header.partition(" ")[2].strip()
        with self._lock:
            if token not in self._oauth_tokens:
                return Response(status_code=400)
            del self._oauth_tokens[token]
        return Response(status_code=200)

    def reactions(self, comment_id: str) -> list[str]:
        """The emoji on a comment, oldest first."""
        with self._lock:
            return [r["emoji"] for r in self._reactions.get(comment_id, [])]

    def user_id(self, name: str) -> str:
        """The id of the user called ``name`` (made on first use)."""
        with self._lock:
            return self._user(name)

    def comments(self, issue_id: str) -> list[Json]:
        """The issue's comments, oldest first, as ``{id, body, user, createdAt, ...}`` copies."""
        with self._lock:
            issue = self._find_issue(issue_id)
            if issue is None:
                return []
            return [self._comment_data(c) for c in self._issue_comments(issue.id)]

    @property
    def requests(self) -> list[str]:
        """The operation (root field names, comma-joined) of every request, in order.

        ``"<invalid>"`` stands for a body that is not a parsable GraphQL request.
        """
        with self._lock:
            return [call.operation for call in self._calls]

    @property
    def calls(self) -> list[tuple[str, Json]]:
        """(operation, variables) of every request, in order (variables copied)."""
        with self._lock:
            return [(call.operation, copy.deepcopy(call.variables)) for call in self._calls]

    # -- injection ------------------------------------------------------------

    def fail_next(
        self,
        operation: str,
        status: int = 500,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        after_acting: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests for ``operation`` (a root field) with ``status``.

        ``body``: ``None`` → Linear's error JSON for the status (500/400/401/403;
        HTML for other statuses, like a proxy); ``str``/``bytes`` → sent as is;
        else JSON. ``headers`` override the rate-limit headers. ``after_acting``
        performs the operation first (the comment is created/edited), then
        answers with the failure, like a proxy timing out after Linear did it.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; known: {list(OPERATIONS)}")
        injection = _Injection(status, dict(headers or {}), body, after_acting, times)
        with self._lock:
            self._failures[operation].append(injection)

    def fail_ratelimited(
        self,
        operation: str,
        *,
        reset_ms: int | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Next request(s): ``RATELIMITED`` (HTTP 400, ``statusCode: 429``), budget at 0.

        ``reset_ms`` is the epoch-ms ``X-RateLimit-Requests-Reset`` (default: the
        current window's); ``retry_after`` adds a ``Retry-After`` header.
        """
        with self._lock:
            reset = reset_ms if reset_ms is not None else self._window_end_ms()
        headers = {
            "X-RateLimit-Requests-Limit": str(self.rate_limit),
            "X-RateLimit-Requests-Remaining": "0",
            "X-RateLimit-Requests-Reset": str(reset),
        }
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        body = {"errors": [ratelimited_error()]}
        self.fail_next(operation, 400, body=body, headers=headers, times=times)

    def delay_next(self, operation: str, seconds: float) -> None:
        """Hold the next request for ``operation`` for ``seconds`` before handling it."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; known: {list(OPERATIONS)}")
        with self._lock:
            self._delays[operation].append(seconds)

    # -- request handling -----------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        try:
            operation, variables = _read_request(await request.body())
        except GraphQLError as exc:
            self._log("<invalid>", {})
            return self._answer({"errors": exc.errors}, exc.status, request)
        name = ",".join(operation.root_fields)
        self._log(name, variables)
        injection, delay = self._take(operation.root_fields)
        if delay:
            await asyncio.sleep(delay)
        if injection is not None and not injection.after_acting:
            return self._injected(injection, request)
        response = self._serve(request, operation, variables)
        if injection is not None:
            return self._injected(injection, request)
        return response

    def _serve(self, request: Request, operation: Operation, variables: Json) -> Response:
        """Authenticate, spend the budget, validate and execute one operation."""
        identity = self._authenticate(request)
        if identity is None:
            return self._answer({"errors": [auth_error()]}, 400, request)
        if not self._spend(identity):
            body = {"errors": [ratelimited_error()]}
            return self._answer(body, 400, request)
        try:
            coerced = _Validator(operation, variables).run()
        except GraphQLError as exc:
            return self._answer({"errors": exc.errors}, exc.status, request)
        complexity = estimate_complexity(
            operation.selections, coerced, "Query" if operation.kind == "query" else "Mutation"
        )
        with self._lock:
            self._buckets[identity].complexity += complexity
            result = self._execute(operation, coerced, identity)
        response = self._answer(result, 200, request)
        response.headers["X-Complexity"] = str(complexity)
        return response

    def _execute(self, operation: Operation, variables: Json, identity: Identity) -> Json:
        """Run the root fields (caller holds the lock); any resolver error nulls ``data``.

        Every root field of this schema is non-null, so one failing field makes
        ``data`` null, as on Linear.
        """
        parent = "Query" if operation.kind == "query" else "Mutation"
        data: Json = {}
        errors: list[Json] = []
        for selected in operation.selections:
            if selected.name == "__typename":
                data[selected.key] = parent
                continue
            args = _resolve_args(selected.args, variables)
            resolver = self._resolvers()[selected.name]
            child = _named(_SCHEMA[parent][selected.name].type)
            try:
                outcome = resolver(args, identity, selected.key)
                data[selected.key] = _project(
                    outcome, selected.selections or [], child, variables, selected.key
                )
            except GraphQLError as exc:
                errors += exc.errors
        if errors:
            return {"errors": errors, "data": None}
        return {"data": data}

    def _resolvers(self) -> dict[str, Callable[[Json, Identity, str], Any]]:
        return {
            "viewer": lambda args, identity, path: self._users[identity],
            "issue": self._resolve_issue,
            "issues": self._resolve_issues,
            "commentCreate": self._comment_create,
            "commentUpdate": self._comment_update,
            "reactionCreate": self._reaction_create,
        }

    def _resolve_issue(self, args: Json, identity: Identity, path: str) -> Any:
        issue = self._find_issue(args["id"])
        if issue is None:
            raise GraphQLError([not_found_error("Issue", path)])
        return self._issue_object(issue)

    def _issue_object(self, issue: _Issue) -> Json:
        """An issue as a resolvable object (caller holds the lock)."""
        return {
            "id": issue.id,
            "identifier": issue.identifier,
            "title": issue.title,
            "number": float(issue.identifier.rpartition("-")[2] or 0),
            "description": issue.description or None,
            "url": f"https://linear.app/{ORGANIZATION_KEY}/issue/{issue.identifier}",
            "createdAt": issue.created_at,
            "updatedAt": issue.updated_at,
            "creator": self._users.get(issue.creator) if issue.creator else None,
            "team": {"id": f"team-{issue.team}", "key": issue.team, "name": issue.team.title()},
            "state": {"id": f"state-{issue.state_type}", "name": issue.state_type.title(),
                      "type": issue.state_type},
            "comments": lambda conn_args, where: self._connection(issue, conn_args, where),
            "labels": lambda conn_args, where: {
                "nodes": [{"id": i, "name": n} for i, n in issue.labels]},
            "history": lambda conn_args, where: {"nodes": [
                {**entry, "actor": self._users.get(entry["actorId"])}
                for entry in issue.history]},
        }

    def _resolve_issues(self, args: Json, identity: Identity, path: str) -> Any:
        """``issues(filter:)`` with the comparators a sweep uses: labels by name
        (``eqIgnoreCase``) or id (``eq``), ``updatedAt.gte``, ``state.type.nin``,
        ``team.key.in``; newest update first; cursor = issue id."""
        wanted = args.get("filter") or {}
        label = (wanted.get("labels") or {})
        by_name = (label.get("name") or {}).get("eqIgnoreCase")
        by_id = (label.get("id") or {}).get("eq")
        since = ((wanted.get("updatedAt") or {}).get("gte")) or ""
        excluded = (((wanted.get("state") or {}).get("type") or {}).get("nin")) or []
        teams = (((wanted.get("team") or {}).get("key") or {}).get("in"))
        found = [i for i in self._issues.values()
                 if (by_name is None or any(n.lower() == str(by_name).lower()
                                            for _, n in i.labels))
                 and (by_id is None or any(lid == by_id for lid, _ in i.labels))
                 and i.updated_at >= since and i.state_type not in excluded
                 and (teams is None or i.team in teams)]
        found.sort(key=lambda i: i.updated_at, reverse=True)
        start = 0
        if args.get("after"):
            ids = [i.id for i in found]
            start = ids.index(args["after"]) + 1 if args["after"] in ids else len(ids)
        first = args.get("first") or DEFAULT_FIRST
        page = found[start:start + first]
        return {"nodes": [self._issue_object(i) for i in page],
                "pageInfo": {"hasNextPage": start + first < len(found),
                             "hasPreviousPage": start > 0,
                             "startCursor": page[0].id if page else None,
                             "endCursor": page[-1].id if page else None}}

    def _connection(self, issue: _Issue, args: Json, path: str) -> Any:
        first = args.get("first")
        first = DEFAULT_FIRST if first is None else first
        if first < 0 or first > MAX_FIRST:
            raise GraphQLError([input_error(f"first must be between 0 and {MAX_FIRST}.", path)])
        comments = self._issue_comments(issue.id)
        start = 0
        after = args.get("after")
        if after is not None:
            ids = [c.id for c in comments]
            if after not in ids:
                raise GraphQLError([input_error("Invalid cursor.", path)])
            start = ids.index(after) + 1
        page = comments[start : start + first]
        return {
            "nodes": [self._comment_object(c) for c in page],
            "pageInfo": {
                "hasNextPage": start + first < len(comments),
                "hasPreviousPage": start > 0,
                "startCursor": page[0].id if page else None,
                "endCursor": page[-1].id if page else None,
            },
        }

    def _comment_create(self, args: Json, identity: Identity, path: str) -> Any:
        data = args["input"]
        body, issue_ref, wanted_id = data.get("body"), data.get("issueId"), data.get("id")
        if not isinstance(body, str) or not body.strip():
            raise GraphQLError([input_error("body must not be empty.", path)])
        if not isinstance(issue_ref, str):
            raise GraphQLError([input_error("issueId must be given.", path)])
        issue = self._find_issue(issue_ref)
        if issue is None:
            raise GraphQLError([not_found_error("Issue", path)])
        if wanted_id is not None and wanted_id in self._comments:
            raise GraphQLError([input_error("A comment with this id already exists.", path)])
        comment = self._insert(issue, body, identity, wanted_id)
        return self._payload(comment)

    def _comment_update(self, args: Json, identity: Identity, path: str) -> Any:
        comment = self._comments.get(args["id"])
        if comment is None:
            raise GraphQLError([not_found_error("Comment", path)])
        body = args["input"].get("body")
        if body is not None:
            if not body.strip():
                raise GraphQLError([input_error("body must not be empty.", path)])
            comment.body = body
            comment.updated_at = comment.edited_at = self._now_iso()
        return self._payload(comment)

    def _reaction_create(self, args: Json, identity: Identity, path: str) -> Any:
        """A reaction on a comment; the same user and emoji collapse into one."""
        data = args["input"]
        comment = self._comments.get(str(data.get("commentId")))
        if comment is None:
            raise GraphQLError([not_found_error("Comment", path)])
        emoji = data.get("emoji")
        if not isinstance(emoji, str) or not emoji.strip():
            raise GraphQLError([input_error("emoji must not be empty.", path)])
        mine = [r for r in self._reactions[comment.id]
                if r["user"] == identity and r["emoji"] == emoji]
        reaction = mine[0] if mine else {"id": str(uuid.uuid4()), "emoji": emoji,
                                         "user": identity}
        if not mine:
            self._reactions[comment.id].append(reaction)
        return {"success": True, "lastSyncId": float(next(self._sync_ids)),
                "reaction": {"id": reaction["id"], "emoji": emoji,
                             "user": self._users[identity]}}

    def _payload(self, comment: _Comment) -> Json:
        return {
            "success": True,
            "lastSyncId": float(next(self._sync_ids)),
            "comment": self._comment_object(comment),
        }

    # -- internals (callers hold the lock where noted) ------------------------------------

    def _log(self, operation: str, variables: Json) -> None:
        with self._lock:
            self._calls.append(_Call(operation, copy.deepcopy(variables)))

    def _take(self, operations: list[str]) -> tuple[_Injection | None, float]:
        """Pop the next delay and injection queued for the first matching operation."""
        with self._lock:
            delay = 0.0
            for operation in operations:
                if self._delays[operation]:
                    delay = self._delays[operation].popleft()
                    break
            for operation in operations:
                queue = self._failures[operation]
                if queue:
                    injection = queue[0]
                    injection.times -= 1
                    if injection.times <= 0:
                        queue.popleft()
                    return injection, delay
            return None, delay

    def _authenticate(self, request: Request) -> Identity | None:
        """The user behind the ``Authorization`` header: raw API key or ``Bearer`` OAuth."""
        header = request.headers.get("authorization", "").strip()
        scheme, _, rest = header.partition(" ")
        with self._lock:
            if scheme.lower() == "bearer":
                return self._oauth_tokens.get(rest.strip())
            return self._api_keys.get(header) if header else None

    def _spend(self, identity: Identity) -> bool:
        """Count one request against the hourly budget; False when it is spent."""
        with self._lock:
            bucket = self._bucket(identity)
            if bucket.requests >= self.rate_limit:
                return False
            bucket.requests += 1
            return True

    def _bucket(self, identity: Identity) -> _Bucket:
        """The identity's current window (caller holds the lock)."""
        bucket = self._buckets[identity]
        now_ms = int(self._clock() * 1000)
        if now_ms >= bucket.reset_ms:
            bucket.requests, bucket.complexity = 0, 0
            bucket.reset_ms = now_ms + 3_600_000
        return bucket

    def _window_end_ms(self) -> int:
        """When a fresh window would end (caller holds the lock)."""
        return int(self._clock() * 1000) + 3_600_000

    def _answer(self, body: Json, status: int, request: Request) -> Response:
        response = JSONResponse(body, status_code=status)
        return self._with_limits(response, request)

    def _with_limits(self, response: Response, request: Request) -> Response:
        identity = self._authenticate(request)
        with self._lock:
            bucket = self._bucket(identity) if identity else _Bucket(
                reset_ms=self._window_end_ms()
            )
            response.headers.update(
                {
                    "X-RateLimit-Requests-Limit": str(self.rate_limit),
                    "X-RateLimit-Requests-Remaining": str(
                        max(0, self.rate_limit - bucket.requests)
                    ),
                    "X-RateLimit-Requests-Reset": str(bucket.reset_ms),
                    "X-RateLimit-Complexity-Limit": str(self.complexity_limit),
                    "X-RateLimit-Complexity-Remaining": str(
                        max(0, self.complexity_limit - bucket.complexity)
                    ),
                    "X-RateLimit-Complexity-Reset": str(bucket.reset_ms),
                }
            )
        return response

    def _injected(self, injection: _Injection, request: Request) -> Response:
        body = injection.body
        if body is None and injection.status in _DEFAULT_FAILURES:
            body = {"errors": [_DEFAULT_FAILURES[injection.status]]}
        if body is None:
            html = f"<html><body><h1>{injection.status}</h1></body></html>"
            response: Response = Response(html, injection.status, media_type="text/html")
        elif isinstance(body, str | bytes):
            response = Response(body, status_code=injection.status)
        else:
            response = JSONResponse(body, status_code=injection.status)
        response = self._with_limits(response, request)
        response.headers.update(injection.headers)
        return response

    def _user(self, name: str) -> Identity:
        """The id of the user called ``name``, created on first use (caller holds the lock)."""
        for user_id, user in self._users.items():
            if user["name"] == name:
                return user_id
        user_id = self._fixed_ids.get(name) or str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"fake-linear-user:{name}"))
        handle = re.sub(r"[^a-z0-9]+", "", name.lower()) or "user"
        self._users[user_id] = {
            "id": user_id,
            "name": name,
            "displayName": handle,
            "email": f"{handle}@example.com",
            "active": True,
            "app": False,
            "url": f"https://linear.app/{ORGANIZATION_KEY}/profiles/{handle}",
            "organization": {"id": ORGANIZATION_ID, "name": "Example", "urlKey": ORGANIZATION_KEY},
        }
        return user_id

    def _find_issue(self, ref: str) -> _Issue | None:
        """An issue by uuid or identifier (caller holds the lock)."""
        issue = self._issues.get(ref)
        if issue is not None:
            return issue
        return next((i for i in self._issues.values() if i.identifier == ref.upper()), None)

    def _issue_comments(self, issue_id: str) -> list[_Comment]:
        """One issue's comments, oldest first (caller holds the lock)."""
        found = [c for c in self._comments.values() if c.issue_id == issue_id]
        return sorted(found, key=lambda c: self._positions[c.id])

    def _insert(
        self, issue: _Issue, body: str, user_id: Identity, comment_id: str | None
    ) -> _Comment:
        """Store a new comment (caller holds the lock)."""
        now = self._now_iso()
        comment = _Comment(comment_id or str(uuid.uuid4()), issue.id, user_id, body, now, now)
        self._comments[comment.id] = comment
        self._positions[comment.id] = next(self._order)
        return comment

    def _comment_object(self, comment: _Comment) -> Json:
        """A comment as a resolvable object (caller holds the lock)."""
        issue = self._issues[comment.issue_id]
        return {
            "id": comment.id,
            "body": comment.body,
            "url": f"https://linear.app/{ORGANIZATION_KEY}/issue/{issue.identifier}"
            f"#comment-{comment.id[:8]}",
            "createdAt": comment.created_at,
            "updatedAt": comment.updated_at,
            "editedAt": comment.edited_at,
            "issueId": comment.issue_id,
            "user": self._users.get(comment.user_id),
        }

    def _comment_data(self, comment: _Comment) -> Json:
        """A comment for test assertions: every field, user as its name (caller holds the lock)."""
        data = self._comment_object(comment)
        user = data.pop("user")
        data["user"] = user["name"] if user else None
        return data

    def _now_iso(self) -> str:
        seconds = self._clock()
        millis = int(seconds * 1000) % 1000
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _read_request(raw: bytes) -> tuple[Operation, Json]:
    """The operation and variables of a POST body, or ``GraphQLError`` (HTTP 400)."""
    try:
        payload = json.loads(raw)
    except ValueError:
        raise GraphQLError([_syntax("Body is not valid JSON.")]) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        raise GraphQLError([validation_error("Must provide query string.")])
    variables = payload.get("variables")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise GraphQLError([validation_error("Variables must be provided as an Object.")])
    return parse_operation(payload["query"]), variables


def _project(
    value: Any, selections: list[_Field], type_name: str, variables: Json, path: str
) -> Any:
    """The selected fields of a resolved object.

    A callable field value is resolved with the field's arguments (variables
    substituted) and the error path; it may raise ``GraphQLError``.
    """
    if value is None:
        return None
    if isinstance(value, list):
        return [_project(item, selections, type_name, variables, path) for item in value]
    if not selections:
        return value
    result: Json = {}
    for selected in selections:
        if selected.name == "__typename":
            result[selected.key] = type_name
            continue
        item = value.get(selected.name)
        if callable(item):
            item = item(_resolve_args(selected.args, variables), f"{path}.{selected.key}")
        child = _named(_SCHEMA[type_name][selected.name].type)
        result[selected.key] = _project(
            item, selected.selections or [], child, variables, f"{path}.{selected.key}"
        )
    return result


__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_OAUTH_TOKEN",
    "DEFAULT_USER",
    "FIXTURE_IDENTIFIER",
    "FIXTURE_ISSUE_ID",
    "FakeLinear",
    "GraphQLError",
    "auth_error",
    "linear_error",
    "parse_operation",
    "ratelimited_error",
]
