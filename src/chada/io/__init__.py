"""Atomic file writes and output checks, the bottom layer every other package writes through.

    atomic_write_bytes(path, data)             # any bytes
    atomic_write_text(path, text)              # UTF-8 text
    atomic_write_json(path, obj, indent=2)     # json.dumps(obj, **kwargs) as UTF-8
    atomic_write_npz(path, feat_cls=x, ...)    # numpy.savez of the named arrays, streamed to disk
    atomic_write_npy(path, array)              # numpy.save of one array (no pickles)

``atomic``: the writes, the temporary files' names and the removal of those a killed job left behind;
``outputs``: output paths checked before any work starts; ``finished``: a run folder's completion
marker (``DONE.json``). Every public name is importable from ``chada.io``.

This package imports nothing else from chada, so any layer may use it.
"""

from chada.io.atomic import (
    DISK_ERRNOS,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_npz,
    atomic_write_text,
    atomic_writer,
    naming_path,
    remove_stale_temps,
    temp_owner,
)
from chada.io.finished import DONE_NAME, UnfinishedFolderError, check_finished, finishing, mark_finished
from chada.io.outputs import check_writable_dir, check_writable_file, safe_filename

__all__ = [
    "DISK_ERRNOS",
    "DONE_NAME",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npy",
    "atomic_write_npz",
    "atomic_write_text",
    "atomic_writer",
    "check_writable_dir",
    "check_writable_file",
    "check_finished",
    "finishing",
    "mark_finished",
    "naming_path",
    "remove_stale_temps",
    "safe_filename",
    "temp_owner",
    "UnfinishedFolderError",
]
