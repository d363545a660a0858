"""Image readers: every supported file becomes a ``[C, H, W]`` float32 numpy array.

Supported formats (chosen from the file name):

- ``.tif`` / ``.tiff`` / ``.ome.tif(f)``: tifffile; single page, multi-page, OME-TIFF.
- ``.png`` / ``.jpg`` / ``.jpeg``: Pillow (8 and 16 bit, grey, RGB, RGBA), imageio as a fallback.
- ``.zarr`` / ``.ome.zarr`` (a folder): an OME-Zarr (OME-NGFF 0.4 on zarr v2, 0.5 on zarr v3) image;
  the first resolution level (``multiscales[0].datasets[0]``) is read. A plain zarr array is read as is.
  A missing chunk is an error (zarr would silently fill it with the fill value).
- ``.npy``: numpy arrays.

Channel-axis rule (documented contract):

1. If the file states its axes (OME-TIFF / ImageJ metadata, tifffile's ``series.axes``; OME-Zarr
   ``multiscales.axes``), the ``C`` axis (TIFF ``S`` samples, i.e. RGB, count as channels too) is the
   channel axis; singleton ``T``/``Z`` axes are dropped. A ``Z`` or ``T`` axis longer than 1 is an error:
   z-slices and time points are not channels, split them into separate images.
2. Otherwise a 2-D array is one channel ``[1, H, W]``; a 3-D array's channel axis is the SMALLER of its
   first and last axis (ties go to the first), so ``[5, 512, 512]`` is CHW and ``[512, 512, 3]`` is HWC.
   Leading singleton axes are squeezed first; 4-D+ arrays without axis metadata are rejected.

Values are converted to float32 without rescaling (normalisation is :mod:`chada.data.normalize`).

Bad files (one rule for every format, checked with ``stat`` before anything opens the file): a
missing path raises ``FileNotFoundError``; a FIFO, socket or device (which would block a read
forever), a file the user may not read ("permission denied", not "corrupt"), a directory
where a file is expected, an unsupported suffix, or a file the decoder cannot read (corrupt,
truncated or garbage TIFF/PNG/JPEG/Zarr/.npy: ``zlib.error``, ``struct.error``, ``IndexError``,
tifffile/Pillow/zarr errors, ...) raises :class:`ImageReadError` naming the file and the decoder's
complaint. Both are :class:`chada.errors.InputError`-like (exit code 2 on the command line).

NaN / inf pixels (:func:`check_finite_pixels`, applied by every reader): ``nan_policy="error"``
(default) raises :class:`NonFinitePixelError` naming the image id (when known), every affected
channel (index and name) with its NaN/inf counts, and the file. ``nan_policy="replace"`` replaces
them, per channel, with ``nan_fill`` or, when ``nan_fill`` is None (default), the median of the
channel's finite pixels (0 for a channel with none), and emits one :class:`NonFinitePixelWarning`
per touched image naming it. ``nan_policy="keep"`` returns them untouched (for callers that check
themselves, e.g. ``chada data check``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chada.data.pixel_checks import (
    NAN_POLICIES,
    ImageReadError,
    NonFinitePixelError,
    NonFinitePixelWarning,
    check_finite_pixels,
    check_nan_policy,
    nonfinite_summary,
)
from chada.errors import short_message, type_name

__all__ = [
    "NAN_POLICIES",
    "SUPPORTED_SUFFIXES",
    "ImageReadError",
    "NonFinitePixelError",
    "NonFinitePixelWarning",
    "check_finite_pixels",
    "nonfinite_summary",
    "read_image",
    "read_raw",
    "read_channels",
    "to_chw",
    "is_supported",
]

SUPPORTED_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr", ".npy")


def _suffix(path: Path) -> str:
    name = path.name.lower().rstrip("/")
    for suf in SUPPORTED_SUFFIXES:
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def is_supported(path: str | Path) -> bool:
    return _suffix(Path(path)) in SUPPORTED_SUFFIXES


def to_chw(array: np.ndarray, axes: str | None = None) -> np.ndarray:
    """Bring an array to ``[C, H, W]`` following the module's channel-axis rule.

    Args:
        array: 2-D or more array.
        axes: optional axis letters (e.g. ``"CYX"``, ``"YXS"``, ``"TCZYX"``), one per dimension.
    """
    if axes is not None:
        axes = axes.upper()
        if len(axes) != array.ndim:
            raise ImageReadError(f"axes {axes!r} do not match array shape {array.shape}")
        # RGB samples are channels; when both C and S exist they are flattened together.
        keep: list[int] = []
        chan: list[int] = []
        for i, ax in enumerate(axes):
            if ax in ("C", "S"):
                chan.append(i)
            elif ax in ("Y", "X"):
                keep.append(i)
            elif array.shape[i] != 1:
                raise ImageReadError(
                    f"axis {ax!r} has length {array.shape[i]} (shape {array.shape}, axes {axes}); "
                    "z-slices / time points are not channels: split them into separate images"
                )
        if len(keep) != 2:
            raise ImageReadError(f"need exactly Y and X axes, got axes {axes!r}")
        drop = [i for i in range(array.ndim) if i not in keep and i not in chan]
        arr = array.squeeze(axis=tuple(drop)) if drop else array
        new_axes = [a for i, a in enumerate(axes) if i not in drop]
        order = [i for i, a in enumerate(new_axes) if a in ("C", "S")] + [
            new_axes.index("Y"),
            new_axes.index("X"),
        ]
        arr = np.transpose(arr, order)
        return arr.reshape(-1, arr.shape[-2], arr.shape[-1])

    arr = array
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ImageReadError(
            f"array of shape {array.shape} has no axis metadata; only 2-D and 3-D arrays can be interpreted"
        )
    if arr.shape[-1] < arr.shape[0]:
        return np.moveaxis(arr, -1, 0)
    return arr


def _as_float32(arr: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize > 4 and arr.size:
        # a finite float64 beyond float32's range would turn into inf in the cast
        big = np.abs(np.where(np.isfinite(arr), arr, 0)).max()
        if big > np.finfo(np.float32).max:
            raise ImageReadError(
                f"{path}: pixel values up to {big:.3g} do not fit float32; rescale the image"
            )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        all_series = tif.series
        series = all_series[0]
        # Pages written one by one (each with its own shape metadata) come back as several 2-D series:
        # those are one page per channel, as in a plain multi-page TIFF.
        if len(all_series) > 1 and all(s.ndim == 2 and s.shape == series.shape for s in all_series):
            return np.stack([s.asarray() for s in all_series])
        arr = series.asarray()
        axes = series.axes
    # tifffile names unknown axes 'Q' (and 'I' for a page sequence): those carry no meaning, so fall
    # back to the shape rule; multi-page plain TIFF comes back as 'IYX' / 'QYX' = one page per channel.
    if any(a in axes for a in "QI"):
        if len(axes) == 3 and axes[1:] == "YX":
            return arr
        return to_chw(arr)
    return to_chw(arr, axes)


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            arr = np.asarray(im)
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a readable PNG/JPEG ({exc})") from exc
    except Exception:  # noqa: BLE001 - some 16-bit PNG variants Pillow refuses; imageio handles them
        import imageio.v3 as iio

        arr = np.asarray(iio.imread(path))
    if arr.ndim == 3:
        # PNG/JPEG samples are always last; the shape rule is only for arrays without a format.
        return np.moveaxis(arr, -1, 0)
    return to_chw(arr)


def _ome_zarr_attrs(attrs: dict) -> dict | None:
    if "ome" in attrs and isinstance(attrs["ome"], dict):  # NGFF 0.5 (zarr v3)
        attrs = attrs["ome"]
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms:
        return ms[0]
    return None


def _zarr_pixels(path: Path, array, name: str) -> np.ndarray:  # noqa: ANN001 - a zarr.Array
    # zarr fills an absent chunk with the fill value: for an image that means an interrupted copy
    # read as silent zeros, so a missing chunk is an error.
    n, have = int(array.nchunks), int(array.nchunks_initialized)
    if have < n:
        raise ImageReadError(
            f"{path}: {n - have} of {n} chunks of array {name!r} are missing (an incomplete copy?); "
            f"zarr would fill them with {array.fill_value}"
        )
    return np.asarray(array[...])


def _read_zarr(path: Path) -> np.ndarray:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return to_chw(_zarr_pixels(path, node, "/"))
    ms = _ome_zarr_attrs(dict(node.attrs))
    if ms is None:
        # A plain group: accept the conventional first level "0".
        if "0" in node:
            return to_chw(_zarr_pixels(path, node["0"], "0"))
        raise ImageReadError(f"{path}: zarr group without OME 'multiscales' metadata nor a '0' array")
    level = ms["datasets"][0]["path"]
    arr = _zarr_pixels(path, node[level], str(level))
    axes_meta = ms.get("axes")
    axes = None
    if axes_meta:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
        axes = "".join(n[0].upper() for n in names)
    return to_chw(arr, axes)


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))  # fmt: skip


def _check_file_kind(p: Path, suf: str) -> None:
    """Refuse what is not an image file before opening it: a FIFO or device would block the read forever
    (``stat``, never ``open``), an unreadable file says "permission denied" (not "corrupt")."""
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {p}") from None
    except PermissionError:
        raise ImageReadError(
            f"{p}: permission denied (a folder above it is not searchable); fix its permissions"
        ) from None
    if stat.S_ISDIR(mode):
        if suf != ".zarr":
            raise ImageReadError(
                f"{p}: is a directory, expected an image file (only .zarr images are folders)"
            )
        return
    if not stat.S_ISREG(mode):
        kind = next((what for test, what in _SPECIAL if test(mode)), "not a regular file")
        raise ImageReadError(f"{p}: is {kind}, not an image file; name a regular file in the manifest")
    if not os.access(p, os.R_OK):
        raise ImageReadError(f"{p}: permission denied; make it readable (chmod) or copy it")


def read_image(path: str | Path, nan_policy: str = "error", nan_fill: float | None = None) -> np.ndarray:
    """Read one image file as ``[C, H, W]`` float32.

    Args:
        path: the image file (or OME-Zarr folder).
        nan_policy, nan_fill: the NaN/inf rule of :func:`check_finite_pixels`.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageReadError: a directory where a file is expected, an unsupported format, a corrupt or
            truncated file, or an axis layout that is not an image.
        NonFinitePixelError: NaN/inf pixels under ``nan_policy="error"``.
    """
    check_nan_policy(nan_policy)
    p = Path(path)
    arr = read_raw(p)
    return check_finite_pixels(_as_float32(arr, p), files=[p], nan_policy=nan_policy, nan_fill=nan_fill)


def read_raw(path: str | Path) -> np.ndarray:
    """Read one image file as ``[C, H, W]`` in the file's own dtype (bool -> uint8): label images keep
    their integer type. Same errors as :func:`read_image`."""
    p = Path(path)
    suf = _suffix(p)
    _check_file_kind(p, suf)
    try:
        if suf in (".tif", ".tiff"):
            arr = _read_tiff(p)
        elif suf in (".png", ".jpg", ".jpeg"):
            arr = _read_pil(p)
        elif suf == ".zarr":
            arr = _read_zarr(p)
        elif suf == ".npy":
            arr = to_chw(np.load(p, allow_pickle=False))
        else:
            raise ImageReadError(f"{p}: unsupported image format {suf!r}; supported: {SUPPORTED_SUFFIXES}")
    except ImageReadError as exc:
        if str(p) in str(exc):
            raise
        raise ImageReadError(f"{p}: {exc}") from exc
    except PermissionError as exc:  # inside a .zarr folder, or a file made unreadable since the check
        raise ImageReadError(
            f"{p}: permission denied ({exc.filename or p}); make it readable (chmod) or copy it"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes decoders raise anything: zlib.error,
        # struct.error, IndexError, tifffile.TiffFileError, PIL errors, zarr errors, MemoryError for a
        # garbage size field...; each is this file's fault, and the message must name the file.
        why = short_message(f"{type_name(exc)}: {exc}", limit=200, one_line=True)
        raise ImageReadError(
            f"{p}: cannot read image, the file is corrupt, truncated or not a {suf} image ({why})"
        ) from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def read_channels(
    paths: Sequence[str | Path], nan_policy: str = "error", nan_fill: float | None = None
) -> np.ndarray:
    """Read one file per channel and stack them as ``[C, H, W]`` float32.

    Each file must hold one channel; a grey image saved as RGB with three identical planes is collapsed
    to one channel (a common export artefact). Files with several distinct channels are rejected, as
    that would silently change the channel count the manifest declares. ``nan_policy`` / ``nan_fill``:
    as in :func:`check_finite_pixels` (an error names the channel's own file).
    """
    check_nan_policy(nan_policy)
    planes: list[np.ndarray] = []
    for path in paths:
        arr = read_image(path, nan_policy="keep")
        if (
            arr.shape[0] in (3, 4)
            and np.array_equal(arr[0], arr[1], equal_nan=True)
            and np.array_equal(arr[0], arr[2], equal_nan=True)
        ):
            arr = arr[:1]
        if arr.shape[0] != 1:
            raise ImageReadError(f"{path}: a per-channel file must hold one channel, got {arr.shape[0]}")
        planes.append(arr)
    if not planes:
        raise ImageReadError("no channel files given")
    sizes = {p.shape[1:] for p in planes}
    if len(sizes) > 1:
        detail = ", ".join(f"{Path(f).name}={p.shape[1]}x{p.shape[2]}" for f, p in zip(paths, planes))
        raise ImageReadError(f"channels of one image differ in H/W: {detail}")
    return check_finite_pixels(
        np.concatenate(planes, axis=0), files=list(paths), nan_policy=nan_policy, nan_fill=nan_fill
    )
