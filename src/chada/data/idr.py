"""A small client of the Image Data Resource (IDR) public JSON API, for ``build-corpus --idr``.

Endpoints used (OMERO JSON API and webgateway, as served by https://idr.openmicroscopy.org):

- ``GET /api/v0/m/projects/{id}/datasets/`` and ``/api/v0/m/datasets/{id}/images/?offset=&limit=``:
  ``{"data": [{"@id": ..., "Name": ...}, ...], "meta": {"totalCount": ..., "offset": ..., "limit": ...}}``;
- ``GET /api/v0/m/screens/{id}/plates/`` and ``/api/v0/m/plates/{id}/wells/``: wells carry
  ``"WellSamples": [{"Image": {"@id": ...}}]``;
- ``GET /webgateway/imgData/{image_id}/``: ``{"id", "meta": {"imageName", ...}, "size": {"width",
  "height", "z", "t", "c"}, "channels": [{"label": ...}, ...]}``;
- ``GET /webgateway/render_image/{image_id}/{z}/{t}/?c={k}&m=g&format=png``: one channel rendered as an
  8-bit grey PNG with the server's rendering settings (a display rendering, not the raw pixels).

Only the standard library is used (``urllib``); everything is downloaded once (files kept, re-runs skip them).
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["IDRClient", "download_study"]


class IDRClient:
    """Read-only client of an IDR/OMERO server's public JSON API.

    Args:
        base_url: e.g. ``"https://idr.openmicroscopy.org"`` (or a local test server).
        timeout: seconds per request.
        page_size: rows per paginated request.
    """

    def __init__(
        self, base_url: str = "https://idr.openmicroscopy.org", timeout: float = 60.0, page_size: int = 200
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.page_size = page_size

    def _get(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, safe="|$:")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:  # noqa: S310 - http(s) URLs only
                return resp.read()
        except OSError as exc:
            raise ConnectionError(f"IDR request failed: {url} ({exc})") from exc

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        raw = self._get(path, params)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"IDR answered non-JSON for {path}: {raw[:200]!r}") from exc

    def _paged(self, path: str, limit: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.get_json(path, {"offset": offset, "limit": self.page_size})
            data = page.get("data", [])
            out.extend(data)
            total = page.get("meta", {}).get("totalCount", len(out))
            offset += len(data)
            if not data or offset >= total or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]

    def project_image_ids(self, project_id: int, limit: int | None = None) -> list[int]:
        """Image ids of a project (all its datasets, in server order)."""
        ids: list[int] = []
        for ds in self._paged(f"/api/v0/m/projects/{project_id}/datasets/"):
            for im in self._paged(f"/api/v0/m/datasets/{ds['@id']}/images/"):
                ids.append(int(im["@id"]))
        return ids if limit is None else ids[:limit]

    def screen_image_ids(self, screen_id: int, limit: int | None = None) -> list[int]:
        """Image ids of a screen (plates -> wells -> well samples)."""
        ids: list[int] = []
        for plate in self._paged(f"/api/v0/m/screens/{screen_id}/plates/"):
            for well in self._paged(f"/api/v0/m/plates/{plate['@id']}/wells/"):
                for ws in well.get("WellSamples", []):
                    if "Image" in ws:
                        ids.append(int(ws["Image"]["@id"]))
        return ids if limit is None else ids[:limit]

    def image_data(self, image_id: int) -> dict[str, Any]:
        """``/webgateway/imgData/{id}/``: size (width, height, z, t, c) and channel labels."""
        return self.get_json(f"/webgateway/imgData/{image_id}/")

    def channel_png(self, image_id: int, channel: int, z: int = 0, t: int = 0) -> bytes:
        """One channel (0-based) of plane (z, t), rendered grey as PNG bytes."""
        return self._get(
            f"/webgateway/render_image/{image_id}/{z}/{t}/", {"c": channel + 1, "m": "g", "format": "png"}
        )


def _atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def download_study(
    client: IDRClient,
    spec: str,
    out_dir: str | os.PathLike,
    n_images: int,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Download ``n_images`` (seeded uniform draw) of study ``spec`` (``project:ID`` / ``screen:ID``).

    Writes one PNG per channel under ``OUT/<kind>_<id>/`` and ``OUT/<kind>_<id>/manifest.csv``
    (``dataset`` = ``idr_<kind>_<id>``, ``study`` = the same, channel names from the server's labels,
    middle z plane and first time point). Returns the manifest path.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from chada.data.manifest import write_manifest

    kind, _, ident = spec.partition(":")
    if kind not in ("project", "screen") or not ident.isdigit():
        raise ValueError(f"IDR study must be 'project:ID' or 'screen:ID', got {spec!r}")
    sid = int(ident)
    ids = client.project_image_ids(sid) if kind == "project" else client.screen_image_ids(sid)
    if not ids:
        raise ValueError(f"IDR {spec}: no image listed")
    rng = np.random.default_rng([int(seed), sid])
    pick = sorted(rng.choice(len(ids), size=min(n_images, len(ids)), replace=False).tolist())
    name = f"{kind}_{sid}"
    folder = Path(out_dir) / name
    rows = []
    for k in tqdm(pick, desc=f"IDR {spec}", disable=not progress):
        iid = ids[k]
        info = client.image_data(iid)
        size = info.get("size", {})
        n_c = int(size.get("c", len(info.get("channels", [])) or 1))
        if not 1 <= n_c <= 10:
            continue  # the model takes 1..10 channels
        labels = [str(c.get("label") or f"c{j}") for j, c in enumerate(info.get("channels", []))][:n_c]
        labels += [f"c{j}" for j in range(len(labels), n_c)]
        z = int(size.get("z", 1)) // 2
        files = []
        for c in range(n_c):
            rel = f"{iid}_c{c}.png"
            if not (folder / rel).exists():
                _atomic(folder / rel, client.channel_png(iid, c, z=z, t=0))
            files.append(rel)
        rows.append({"image_id": f"idr_{iid}", "dataset": f"idr_{name}", "study": f"idr_{name}",
                     "channel_files": ";".join(files), "channel_names": ";".join(labels), "split": "train",
                     "image_name": info.get("meta", {}).get("imageName")})  # fmt: skip
    if not rows:
        raise ValueError(f"IDR {spec}: no image with 1..10 channels among the drawn ones")
    return write_manifest(pd.DataFrame(rows), folder / "manifest.csv")
