"""The error policy of ``chada``: which failures are the user's input, and how the CLI reports them.

Every failure the command line reports is one or two lines that name the file, row or image id and
say what to do; the exit code tells input problems from everything else:

- exit 2, **bad input**: :class:`InputError` and the built-in types a bad path, file or value
  raises (:data:`INPUT_ERRORS`: ``ValueError``, ``TypeError``, ``FileNotFoundError``,
  ``PermissionError``, ``IsADirectoryError``, ``NotADirectoryError``, ``FileExistsError``, YAML
  syntax errors). Readers wrap decoder failures (``zlib.error``, ``struct.error``, tifffile, Pillow,
  zarr, ...) in :class:`chada.data.readers.ImageReadError`, an :class:`InputError`.
- exit 1, **other failures**: :class:`ChadaError` (a known failure that is not the input's fault),
  ``OSError`` (an I/O error; a full disk, a quota, a file-size limit or a read-only file system as
  ``error: no space left on device writing PATH; free space or choose another --out``) and
  ``MemoryError`` as ``error: ...``; anything else as
  ``internal error: <type>: <message> (re-run with --debug for the traceback)``.
- exit 130: interrupted (Ctrl-C); finished work is kept.

``chada --debug COMMAND ...`` (or ``COMMAND ... --debug`` where the sub-command has it, or the
environment variable ``CHADA_DEBUG=1``) shows the full traceback instead.

Errors raised inside a DataLoader worker reach the main process as the same exception type whose
message is the worker's whole traceback; :func:`describe` keeps only the original message.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TextIO

__all__ = [
    "ChadaError",
    "InputError",
    "INPUT_ERRORS",
    "debug_requested",
    "describe",
    "exit_code",
    "report",
    "short_message",
    "type_name",
    "one_line_warnings",
]


class ChadaError(Exception):
    """A failure ``chada`` reports in one or two lines without a traceback (exit code 1)."""


class InputError(ChadaError, ValueError):
    """Bad user input: a file, manifest row, image or value that cannot be used (exit code 2).

    Also a ``ValueError``, so callers that catch ``ValueError`` keep working.
    """


def _yaml_error() -> tuple[type[BaseException], ...]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        return ()
    return (yaml.YAMLError,)


#: Exception types that mean "the input is bad" (exit code 2).
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    InputError,
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    *_yaml_error(),
)

# Known failures that are not bugs: reported as "error", exit 1.
_KNOWN_FAILURES: tuple[type[BaseException], ...] = (ChadaError, OSError, MemoryError)

# A full disk, a quota, a file-size limit or a read-only file system: what the user can do about it.
_DISK: dict[int, str] = {
    errno.ENOSPC: "no space left on device writing {}; free space or choose another --out",
    errno.EDQUOT: "disk quota exceeded writing {}; free space or choose another --out",
    errno.EFBIG: "file too large writing {} (a file-size limit: ulimit -f); raise the limit or choose another --out",
    errno.EROFS: "read-only file system writing {}; choose another --out",
}

_WORKER_RE = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\s*\nOriginal Traceback", re.M)


def type_name(exc: BaseException) -> str:
    """``"ValueError"`` for a built-in, ``"zlib.error"`` / ``"tifffile.TiffFileError"`` otherwise."""
    cls = type(exc)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module.split('.')[0]}.{cls.__qualname__}"


def short_message(text: str, limit: int = 300, one_line: bool = False) -> str:
    """``text`` stripped, unprintable characters replaced, cut to ``limit`` characters.

    Decoders put raw bytes of a corrupt file into their messages; this keeps a report readable.
    ``one_line``: also fold line breaks into spaces (for a library's message quoted inside ours).
    """
    text = str(text).strip()
    if one_line:
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    clean = "".join(ch if ch.isprintable() or ch == "\n" else "?" for ch in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _unwrap_worker(text: str) -> str:
    """The original message of an exception re-raised by a DataLoader worker (else ``text``)."""
    if not _WORKER_RE.search(text):
        return text
    # The worker's formatted traceback ends with "module.Type: message" after the last frame lines
    # (frames and source lines are indented); with chained exceptions the last block is the raised one.
    block = text.rsplit("Traceback (most recent call last):", 1)[-1]
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith(" "):
            head, _, rest = line.partition(": ")
            first = rest if rest and re.fullmatch(r"[\w.]+", head) else line
            return "\n".join([first, *lines[i + 1 :]]).strip()
    return text


def describe(exc: BaseException, source: str | None = None) -> str:
    """The message to show for ``exc``: unwrapped from a worker, YAML marks folded into one line.

    ``source``: the file a YAML error came from (a parser fed with text does not know it).
    """
    text = str(exc)
    if not text and exc.args:
        text = repr(exc.args[0])
    text = _unwrap_worker(text)
    if isinstance(exc, OSError) and exc.errno in _DISK:
        return _DISK[exc.errno].format(exc.filename if exc.filename is not None else "an output")
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror and text.startswith("[Errno"):
        # "[Errno 21] Is a directory: 'x'" -> "x: is a directory, expected a file"
        text = f"{exc.filename}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
        if exc.filename2 is not None:
            text += f" (and {exc.filename2})"
        if isinstance(exc, IsADirectoryError):
            text += ", expected a file"
        elif isinstance(exc, NotADirectoryError):
            text += ", expected a folder"
    yaml_errors = _yaml_error()
    if yaml_errors and isinstance(exc, yaml_errors):
        text = _describe_yaml(exc, source)
    return short_message(text.strip() or type(exc).__name__, limit=600)


def _describe_yaml(exc: BaseException, source: str | None) -> str:
    """``invalid YAML in cfg.yaml, line 3, column 9: expected ',' or ']', but got ':' (...)``."""
    where = f" in {source}" if source else ""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return f"invalid YAML{where}: " + " ".join(
            part.strip() for part in str(exc).splitlines() if part.strip()
        )
    text = f"invalid YAML{where}, line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context:
        at = f" at line {context_mark.line + 1}" if context_mark is not None else ""
        text += f" ({context}{at})"
    return text


def exit_code(exc: BaseException) -> int:
    """2 for bad input, 130 for an interrupt, 1 for everything else."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 2 if isinstance(exc, INPUT_ERRORS) else 1


def report(exc: BaseException, command: str, stream: TextIO | None = None, source: str | None = None) -> int:
    """Print the one- or two-line report of ``exc`` for ``chada COMMAND`` and return the exit code.

    ``source``: the config file of the command, named in a YAML error.
    """
    stream = stream if stream is not None else sys.stderr
    code = exit_code(exc)
    msg = describe(exc, source)
    if code == 2:
        print(f"chada {command}: error: {msg}", file=stream)
    elif isinstance(exc, _KNOWN_FAILURES):
        plain = isinstance(exc, ChadaError) or (isinstance(exc, OSError) and exc.errno in _DISK)
        label = "" if plain else f"{type_name(exc)}: "
        print(f"chada {command}: error: {label}{msg}", file=stream)
    else:
        print(
            f"chada {command}: internal error: {type_name(exc)}: {msg} "
            "(re-run with --debug for the traceback)",
            file=stream,
        )
    return code


def debug_requested(flag: bool = False) -> bool:
    """True when ``--debug`` was given or ``CHADA_DEBUG`` is set to a true value."""
    env = os.environ.get("CHADA_DEBUG", "").strip().lower()
    return bool(flag) or env not in ("", "0", "false", "no", "off")


@contextmanager
def one_line_warnings(command: str, stream: TextIO | None = None) -> Iterator[None]:
    """Within the block, every warning prints as one line ``chada CMD: warning: <message>``.

    Python's default shows the file name, line number and source line of the ``warnings.warn`` call,
    which reads like a crash to a user. Filters are untouched (``-W`` and ``PYTHONWARNINGS`` work).
    """

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        out = file if file is not None else (stream if stream is not None else sys.stderr)
        name = "" if category in (UserWarning, Warning) else f"{category.__name__}: "
        with suppress(OSError, ValueError):  # a closed stream must not turn a warning into a failure
            print(f"chada {command}: warning: {name}{short_message(str(message), 600)}", file=out)

    saved = warnings.showwarning
    warnings.showwarning = show
    # matplotlib warns through logging (an unwritable HOME: "Matplotlib created a temporary cache
    # directory ..."); Python's last-resort handler would print it bare, over two lines.
    handler = _OneLineHandler(command, stream)
    mpl = logging.getLogger("matplotlib")
    mpl.addHandler(handler)
    # The resource tracker (its own process) warns about the semaphores of worker processes a Ctrl-C or a
    # terminate() ended, in Python's multi-line form, after chada has exited: it removes them either way,
    # so the note is silenced (-W is how a spawned tracker inherits a filter).
    quiet_tracker = "ignore:resource_tracker:UserWarning"
    added = quiet_tracker not in sys.warnoptions
    if added:
        sys.warnoptions.append(quiet_tracker)
    try:
        yield
    finally:
        warnings.showwarning = saved
        mpl.removeHandler(handler)
        if added and quiet_tracker in sys.warnoptions:
            sys.warnoptions.remove(quiet_tracker)


class _OneLineHandler(logging.Handler):
    """Warnings of a library's logger as ``chada CMD: warning: <message>`` on one line."""

    def __init__(self, command: str, stream: TextIO | None) -> None:
        super().__init__(logging.WARNING)
        self.command, self.stream = command, stream

    def emit(self, record: logging.LogRecord) -> None:
        out = self.stream if self.stream is not None else sys.stderr
        with suppress(OSError, ValueError):
            msg = short_message(record.getMessage(), 600, one_line=True)
            print(f"chada {self.command}: {record.levelname.lower()}: {msg}", file=out)
