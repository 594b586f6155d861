"""Stage 1: parse and validate a GraphQL request, once.

The parsed and validated document is cached by its text (most department apps send the
same few queries with different variables), then the operation is chosen and the
variables are coerced. Anything wrong here fails the whole request with a 400.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values

from gateway.errors import Code, GraphQLErrorOut, RequestError

__all__ = ["DocumentCache", "Prepared", "prepare"]

MAX_QUERY_CHARS = 100_000
MAX_TOKENS = 10_000  # graphql-core stops parsing past this many tokens: a cheap guard against huge documents


@dataclass(frozen=True, slots=True)
class Prepared:
    text: str
    document: DocumentNode
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDefinitionNode]
    variables: dict[str, Any]  # coerced
    raw_variables: dict[str, Any]  # as sent: graphql-core's executor coerces them itself


def _out(err: GraphQLError, code: Code) -> GraphQLErrorOut:
    locs = [{"line": loc.line, "column": loc.column} for loc in err.locations or []]
    return GraphQLErrorOut(err.message, code, locations=locs or None)


class DocumentCache:
    """Parsed-and-validated documents by query text (LRU), per schema."""

    def __init__(self, schema: GraphQLSchema, size: int = 512) -> None:
        self.schema = schema
        self.size = size
        self._items: OrderedDict[str, DocumentNode | list[GraphQLErrorOut]] = OrderedDict()

    def get(self, text: str) -> DocumentNode:
        hit = self._items.get(text)
        if hit is None:
            hit = self._load(text)
            self._items[text] = hit
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(text)
        if isinstance(hit, list):
            code = hit[0].code
            raise RequestError(code, hit[0].message, 400, errors=hit)
        return hit

    def _load(self, text: str) -> DocumentNode | list[GraphQLErrorOut]:
        try:
            document = parse(text, max_tokens=MAX_TOKENS)
        except GraphQLError as err:
            return [_out(err, Code.GRAPHQL_PARSE_FAILED)]
        errors = validate(self.schema, document)
        if errors:
            return [_out(e, Code.GRAPHQL_VALIDATION_FAILED) for e in errors]
        return document


def _json_type(value: Any) -> str:
    """How JSON calls the type of ``value`` (a message for the client, never the value itself)."""
    return {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), "a value of another type")


def prepare(cache: DocumentCache, text: Any, operation_name: Any, variables: Any, method: str = "POST") -> Prepared:
    if text is not None and not isinstance(text, str):
        raise RequestError(Code.BAD_REQUEST, f"query must be a string of GraphQL, not {_json_type(text)}: send "
                           "{\"query\": \"{ ... }\"}")
    if not isinstance(text, str) or not text.strip():
        raise RequestError(Code.BAD_REQUEST, "the request has no query: send {\"query\": \"{ ... }\"}")
    if len(text) > MAX_QUERY_CHARS:
        raise RequestError(Code.BAD_REQUEST, f"the query is longer than {MAX_QUERY_CHARS} characters")
    if operation_name is not None and not isinstance(operation_name, str):
        raise RequestError(Code.BAD_REQUEST, "operationName must be a string")
    if variables is not None and not isinstance(variables, dict):
        raise RequestError(Code.BAD_REQUEST, "variables must be a JSON object of name: value")
    document = cache.get(text)

    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is None:
        if len(operations) != 1:
            raise RequestError(Code.OPERATION_NOT_FOUND,
                               "the document has several operations: say which one in operationName")
        operation = operations[0]
    else:
        found = [o for o in operations if o.name and o.name.value == operation_name]
        if not found:
            names = ", ".join(o.name.value for o in operations if o.name) or "(none named)"
            raise RequestError(Code.OPERATION_NOT_FOUND,
                               f"no operation named {operation_name!r} in the document; it has: {names}")
        operation = found[0]
    if cache.schema.get_root_type(operation.operation) is None:
        # graphql-core's validation leaves this to execution; refuse it here, before planning.
        raise RequestError(Code.GRAPHQL_VALIDATION_FAILED,
                           f"this gateway has no {operation.operation.value} operations: send a query")
    if operation.operation is not OperationType.QUERY and method == "GET":
        raise RequestError(Code.METHOD_NOT_ALLOWED, f"{operation.operation.value} operations must be sent with POST",
                           405, headers={"Allow": "POST"})

    coerced = get_variable_values(cache.schema, operation.variable_definitions or (), variables or {})
    if isinstance(coerced, list):
        errs = [_out(e, Code.BAD_USER_INPUT) for e in coerced]
        raise RequestError(Code.BAD_USER_INPUT, errs[0].message, 400, errors=errs)
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    return Prepared(text, document, operation, fragments, coerced, dict(variables or {}))
