"""Reading user documents: YAML or JSON, one or many (`---`), native or Kuscia format.

Every failure names the document (its index in the stream, and the line for YAML syntax errors) so a
user with a 200-line file knows where to look.  Parsing is all-or-nothing: a stream with one bad
document yields an error and no resources, so `accord apply` never half-applies a file.
"""

from __future__ import annotations

from typing import Any

import yaml

from accord.errors import AccordError, ErrorCode, InvalidArgument
from accord.resources.kuscia import from_kuscia, is_kuscia_document
from accord.resources.meta import AnyResource
from accord.resources.registry import parse_resource


def load_documents(text: str | bytes) -> list[dict[str, Any]]:
    """Parse YAML/JSON text into a list of mappings (empty documents are skipped)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"document is not UTF-8 text: {exc}", code=ErrorCode.MALFORMED_DOCUMENT
            ) from exc
    try:
        raw = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidArgument(f"malformed YAML{where}: {problem}", code=ErrorCode.MALFORMED_DOCUMENT) from exc
    docs: list[dict[str, Any]] = []
    for index, doc in enumerate(raw):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise InvalidArgument(
                f"document {index + 1}: expected a mapping with 'kind', got {type(doc).__name__}",
                code=ErrorCode.MALFORMED_DOCUMENT,
            )
        docs.append(doc)
    if not docs:
        raise InvalidArgument("no documents found", code=ErrorCode.MALFORMED_DOCUMENT)
    return docs


def to_resource(doc: dict[str, Any]) -> AnyResource:
    """One mapping (native or Kuscia) to a validated resource."""
    if is_kuscia_document(doc):
        return from_kuscia(doc)
    return parse_resource(doc)


def parse_documents(text: str | bytes) -> list[AnyResource]:
    """Parse a whole stream; the first bad document fails the lot, naming its position."""
    docs = load_documents(text)
    out: list[AnyResource] = []
    for index, doc in enumerate(docs):
        try:
            out.append(to_resource(doc))
        except AccordError as exc:
            prefix = f"document {index + 1}: " if len(docs) > 1 else ""
            raise type(exc)(prefix + exc.message, code=exc.code) from exc
    return out
