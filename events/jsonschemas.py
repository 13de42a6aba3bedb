"""JSON Schemas of the records anyone may produce or read: the envelope, each command, each event of the log.

Why files, generated from the pydantic models: a team whose services are in Java or Go produces commands with its
own Kafka client and checks them with its own JSON Schema library, so the schemas must exist outside Python and
must say exactly what the codec accepts. The models are the truth; ``generate()`` derives one schema per record
type from them, the files ship in the package (``tickflow/events/published/``), the API serves them
(``GET /schemas``), and a unit test regenerates them and fails on any difference, naming the command that
rewrites them (``python -m tickflow.events.jsonschemas --write``).

Each record schema is the whole record a producer writes — the envelope with ``kind`` and ``type`` fixed and the
payload's own schema in place of ``payload`` — so one validation checks everything the engine will check, except
what JSON Schema cannot say (the Kafka record's key must equal ``key``; a ForkRun carries its history one way).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any

import tickflow.events.agents  # noqa: F401 - registers the agent and stack types in PAYLOAD_TYPES
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import PAYLOAD_TYPES, Payload

__all__ = [
    "DIALECT",
    "ENVELOPE",
    "INDEX",
    "PUBLISHED_KINDS",
    "SOURCE_DIR",
    "differences",
    "generate",
    "load",
    "main",
    "published",
    "record_schema",
    "render",
    "write",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The name of the generic envelope's schema (any kind, payload any object).
ENVELOPE = "envelope"
#: The name of the file listing every schema by kind.
INDEX = "index"
#: The kinds published: what producers write (commands) and what subscribers read (the log, the dead letters).
#: Tasks, results, control and token records are between tickflow's own roles.
PUBLISHED_KINDS = ("command", "event", "dead_letter")
_PACKAGE = __package__ or __name__.rpartition(".")[0]
_FOLDER = "published"
#: Where ``--write`` puts the files: beside this module in the source tree (an editable install links this module
#: to its source, so ``resolve()`` finds the checkout).
SOURCE_DIR = Path(__file__).resolve().parent / _FOLDER
_REGENERATE = "python -m tickflow.events.jsonschemas --write"


def _tidy(node: Any) -> Any:
    """Say ``Int64``'s bounds the way a reader expects: pydantic writes them as they are declared (exclusive, see
    ``schemas.Int64``), i.e. ``exclusiveMaximum: 2**63`` beside a field's own ``maximum``. The same set of integers,
    written as inclusive bounds, and only where the field sets none of its own."""
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _tidy(value) for key, value in node.items()}
    if out.get("exclusiveMaximum") == 2**63:
        del out["exclusiveMaximum"]
        out.setdefault("maximum", 2**63 - 1)
    if out.get("exclusiveMinimum") == -(2**63) - 1:
        del out["exclusiveMinimum"]
        out.setdefault("minimum", -(2**63))
    return out


def _envelope_base() -> dict[str, Any]:
    """The envelope's schema without its payload's (``Payload`` itself has no fields and would refuse any)."""
    schema = Envelope.model_json_schema(mode="validation")
    schema.pop("$defs", None)  # only the empty Payload base lives there
    return schema


def record_schema(payload_cls: type[Payload]) -> dict[str, Any]:
    """The schema of a whole record of ``payload_cls``: the envelope with its kind and type fixed, its payload's
    schema inline, and any models the payload nests under ``$defs``."""
    schema = _envelope_base()
    payload = _tidy(payload_cls.model_json_schema(mode="validation", ref_template="#/$defs/{model}"))
    defs = payload.pop("$defs", {})
    props = schema["properties"]
    props["kind"] = {"const": payload_cls.KIND, "description": props["kind"]["description"]}
    props["type"] = {"const": payload_cls.TYPE, "description": props["type"]["description"]}
    version = props["schema_version"]
    version.update(const=payload_cls.VERSION)
    version.pop("minimum", None)
    if payload_cls.VERSION > 1:
        # Left out, the version reads as 1 and the payload would be upcast from v1: a producer writing today's
        # shape must say which version it is.
        version.pop("default", None)
        schema["required"].append("schema_version")
        version["description"] = f"Version of the payload's schema: {payload_cls.VERSION} for the shape below."
    props["payload"] = {**payload, "description": props["payload"]["description"]}
    kind = payload_cls.KIND.replace("_", " ")
    out: dict[str, Any] = {
        "$schema": DIALECT,
        "title": f"{payload_cls.TYPE} ({kind} record)",
        "description": payload.get("description", "") or f"A {payload_cls.TYPE} {kind} record.",
    }
    out.update((k, v) for k, v in schema.items() if k not in ("title", "description"))
    if defs:
        out["$defs"] = defs
    return out


def _envelope_schema() -> dict[str, Any]:
    schema = _envelope_base()
    schema["properties"]["payload"] = {"type": "object", "description": schema["properties"]["payload"]["description"]}
    out: dict[str, Any] = {
        "$schema": DIALECT,
        "title": "tickflow record envelope",
        "description": "Every record on tickflow's topics: a header around a typed payload. The schema of each "
                       "type (by its name) says what its payload holds.",
    }
    out.update((k, v) for k, v in schema.items() if k not in ("title", "description"))
    return out


def _published_types() -> list[type[Payload]]:
    chosen = [cls for (kind, _), cls in PAYLOAD_TYPES.items() if kind in PUBLISHED_KINDS]
    return sorted(chosen, key=lambda cls: (PUBLISHED_KINDS.index(cls.KIND), cls.TYPE))


def generate() -> dict[str, dict[str, Any]]:
    """Every published schema by name (the envelope, each record type, and the index), from the models now."""
    schemas: dict[str, dict[str, Any]] = {ENVELOPE: _envelope_schema()}
    index: dict[str, Any] = {"envelope": ENVELOPE}
    for cls in _published_types():
        if cls.TYPE in schemas:
            raise RuntimeError(f"two published record types are named {cls.TYPE}; schema names must be unique")
        schemas[cls.TYPE] = record_schema(cls)
        index.setdefault(cls.KIND, []).append(cls.TYPE)
    schemas[INDEX] = index
    return schemas


def render(schema: dict[str, Any]) -> str:
    """The file text of a schema: stable (the models' field order, two-space indents) so diffs stay readable."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def published() -> dict[str, Any]:
    """The shipped index: ``{"envelope": "envelope", "command": [...], "event": [...], "dead_letter": [...]}``."""
    loaded = load(INDEX)
    if loaded is None:  # load always knows the index; this keeps the type exact
        raise FileNotFoundError(f"tickflow.events ships no {_FOLDER}/{INDEX}.json; reinstall tickflow")
    return loaded


def load(name: str) -> dict[str, Any] | None:
    """The shipped schema called ``name`` (``envelope``, ``StartRun``, ``index``…), or None if there is none.

    Only names from the shipped index are read, so a name can never reach outside the folder."""
    text = _shipped_text(name) if name in _shipped_names() else None
    return None if text is None else dict(json.loads(text))


@functools.cache
def _shipped_names() -> frozenset[str]:
    index = json.loads(_shipped_text(INDEX))
    return frozenset({INDEX, ENVELOPE, *(n for names in index.values() if isinstance(names, list) for n in names)})


@functools.cache
def _shipped_text(name: str) -> str:
    """A shipped file's text, read once (only ever called with a shipped name: the cache stays bounded)."""
    return files(_PACKAGE).joinpath(_FOLDER).joinpath(f"{name}.json").read_text(encoding="utf-8")


def differences(directory: Path) -> list[str]:
    """What in ``directory`` differs from ``generate()``: files missing, stale or left over (empty: up to date)."""
    wanted = {f"{name}.json": render(schema) for name, schema in generate().items()}
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    problems = [f"{name}: missing" for name in sorted(wanted.keys() - present)]
    problems += [f"{name}: no such record type any more" for name in sorted(present - wanted.keys())]
    problems += [
        f"{name}: differs from the models"
        for name in sorted(wanted.keys() & present)
        if (directory / name).read_text(encoding="utf-8") != wanted[name]
    ]
    return problems


def write(directory: Path) -> list[str]:
    """Rewrite ``directory`` to match the models; returns the names of the files written or removed."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {f"{name}.json": render(schema) for name, schema in generate().items()}
    changed = []
    for stale in sorted({p.name for p in directory.glob("*.json")} - wanted.keys()):
        (directory / stale).unlink()
        changed.append(stale)
    for name, text in wanted.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m tickflow.events.jsonschemas [--write | --check] [DIR]``: rewrite or check the shipped files."""
    args = list(sys.argv[1:] if argv is None else argv)
    mode = args.pop(0) if args and args[0] in ("--write", "--check") else "--check"
    directory = Path(args[0]) if args else SOURCE_DIR
    if mode == "--write":
        changed = write(directory)
        print(f"{len(changed)} schema file(s) written or removed in {directory}" + "".join(f"\n  {c}" for c in changed))
        return 0
    problems = differences(directory)
    if problems:
        print(f"the JSON Schemas in {directory} do not match the models; run `{_REGENERATE}`:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 1
    print(f"the JSON Schemas in {directory} match the models")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
