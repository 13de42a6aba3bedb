"""tickflow's exceptions are one tree (``tickflow.events.errors``): every class the package defines descends from
``TickflowError``, chooses an ``ErrorCode`` and is exported by its module, bar the few listed in ``OUTSIDE``.

The classes are found by importing every module of the package (``__main__`` modules aside: importing one runs the
CLI) and walking the subclasses of ``BaseException`` whose home is a ``tickflow`` module, so a class nested in a
function is seen too once its module ran it.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

import pytest

import tickflow
from tickflow.events.errors import ErrorCode, NonRetryableError, RetryableError, TickflowError

#: The only exceptions of the package allowed outside the tree, each with why. Control-flow signals (suspension,
#: cancellation) belong here too, as ``BaseException`` subclasses: none is defined today (a cancelled step sees
#: asyncio's own ``CancelledError``, a wait is a node of the spec, not an exception).
OUTSIDE = {
    # An HTTP answer's shape (status, code, detail) that FastAPI renders, raised inside routes: not an error
    # raised at a user. It carries an ErrorCode all the same.
    "tickflow.api.deps.ApiProblem": "HTTPException shape",
}

#: Every code and its value: a stable contract that clients match on. Adding one is a decision (add it here);
#: renaming or removing one breaks clients.
CODES = {
    "INTERNAL": "internal",
    "INVALID_REQUEST": "invalid_request",
    "UNAUTHORIZED": "unauthorized",
    "FORBIDDEN": "forbidden",
    "NOT_FOUND": "not_found",
    "UNKNOWN_WORKFLOW": "unknown_workflow",
    "RUN_NOT_FOUND": "run_not_found",
    "STACK_NOT_FOUND": "stack_not_found",
    "CONFLICT": "conflict",
    "PAYLOAD_TOO_LARGE": "payload_too_large",
    "UNAVAILABLE": "unavailable",
    "RESUME_REJECTED": "resume_rejected",
    "UNKNOWN_STEP_FUNCTION": "unknown_step_function",
    "STEP_FAILED": "step_failed",
    "BUSY": "busy",
    "BLOB_NOT_FOUND": "blob_not_found",
    "INVALID_RECORD": "invalid_record",
    "OUT_OF_SEQUENCE": "out_of_sequence",
    "MISCONFIGURED": "misconfigured",
    "LLM_FAILED": "llm_failed",
    "BUDGET_EXCEEDED": "budget_exceeded",
}

#: Record-level errors (an input record that can never be processed) and other verdicts retrying cannot change.
NEVER_RETRIED = [
    "tickflow.events.codec.InvalidRecord",
    "tickflow.events.codec.RecordTooLarge",
    "tickflow.core.state.SequenceError",
    "tickflow.core.interpreter.NodeFailure",
    "tickflow.projections.sql.SqlError",
    "tickflow.runtime.export_formats.ExportFormatError",
]

#: Classes that were a builtin exception before they joined the tree and stay one, for the code that catches it.
BUILTIN_BASES = {
    "tickflow.events.codec.InvalidRecord": ValueError,
    "tickflow.core.state.SequenceError": ValueError,
    "tickflow.runtime.export_formats.ExportFormatError": ValueError,
    "tickflow.projections.sql.SqlError": ValueError,
    "tickflow.broker.launcher.LocalBrokerError": RuntimeError,
}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@cache
def exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a ``tickflow`` module, by its full name."""
    failed: list[str] = []
    for info in pkgutil.walk_packages(tickflow.__path__, "tickflow.", onerror=failed.append):
        if info.name.rpartition(".")[2] != "__main__":
            importlib.import_module(info.name)
    assert not failed, f"packages that could not be walked: {failed}"
    found: dict[str, type[BaseException]] = {}
    todo: list[type[BaseException]] = [BaseException]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.split(".")[0] == "tickflow" and _name(sub) not in found:
                found[_name(sub)] = sub
            todo.append(sub)
    return found


def test_the_walk_sees_every_layer() -> None:
    names = set(exceptions())
    for expected in ("tickflow.events.errors.TickflowError", "tickflow.events.codec.InvalidRecord",
                     "tickflow.projections.sql.SqlError", "tickflow.runtime.kafka.SendFailed", *OUTSIDE):
        assert expected in names


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_each_exception_allowed_outside_exists_and_is_outside(name: str) -> None:
    cls = exceptions().get(name)
    assert cls is not None, f"{name} is gone: remove it from OUTSIDE"
    assert not issubclass(cls, TickflowError), f"{name} joined the tree: remove it from OUTSIDE"


def test_every_exception_descends_from_tickflow_error_and_chooses_a_code() -> None:
    outside, fallback, no_code = [], [], []
    for name, cls in exceptions().items():
        if name in OUTSIDE:
            continue
        if not issubclass(cls, TickflowError):
            outside.append(name)
            continue
        if not isinstance(cls.__dict__.get("code", cls.code), ErrorCode):
            no_code.append(name)
        # The code must be chosen by the class or an ancestor below the root: the root's INTERNAL is the fallback
        # "not classified", and a new class must say what goes wrong.
        chooser = next(c for c in cls.__mro__ if "code" in c.__dict__)
        if chooser is TickflowError and cls is not TickflowError:
            fallback.append(name)
    assert not outside, f"derive these from tickflow.events.errors.TickflowError (or list them in OUTSIDE): {outside}"
    assert not no_code, f"these carry a code that is not an ErrorCode: {no_code}"
    assert not fallback, f"give these a code (class attribute `code = ErrorCode.…`): {fallback}"


def test_every_exception_is_exported_by_its_module() -> None:
    missing = []
    for name, cls in exceptions().items():
        module = importlib.import_module(cls.__module__)
        if cls.__name__.startswith("_") or "." in cls.__qualname__ or name in OUTSIDE:
            continue
        if cls.__name__ not in getattr(module, "__all__", [cls.__name__]):
            missing.append(name)
    assert not missing, f"list these in their module's __all__: {missing}"


def test_no_two_exceptions_share_a_name() -> None:
    by_name: dict[str, list[str]] = {}
    for name, cls in exceptions().items():
        by_name.setdefault(cls.__name__, []).append(name)
    shared = {k: v for k, v in by_name.items() if len(v) > 1}
    assert not shared, f"one name, two exceptions: {shared}"
    import builtins

    shadowing = sorted(n for n in by_name if isinstance(getattr(builtins, n, None), type))
    assert not shadowing, f"these shadow a builtin exception: {shadowing}"


def test_the_codes_are_stable() -> None:
    assert {code.name: code.value for code in ErrorCode} == CODES


@pytest.mark.parametrize("name", NEVER_RETRIED)
def test_record_level_errors_are_never_retried(name: str) -> None:
    cls = exceptions()[name]
    assert issubclass(cls, NonRetryableError) and not issubclass(cls, RetryableError)


@pytest.mark.parametrize("name", sorted(BUILTIN_BASES))
def test_builtin_bases_kept_for_the_code_that_catches_them(name: str) -> None:
    assert issubclass(exceptions()[name], BUILTIN_BASES[name])


def test_same_meaning_same_class() -> None:
    from tickflow.events.codec import RecordTooLarge
    from tickflow.events.errors import PayloadTooLarge, RunNotFound
    from tickflow.runtime.replay import UnknownHistory

    assert issubclass(RecordTooLarge, PayloadTooLarge) and RecordTooLarge.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert issubclass(UnknownHistory, RunNotFound) and UnknownHistory.code is ErrorCode.RUN_NOT_FOUND
