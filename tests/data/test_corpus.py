"""build-corpus: balanced, seeded, resumable; IDR client against a local server in the API's shapes."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from chada.data import bundled, synth
from chada.data.corpus import build_corpus
from chada.data.manifest import check_manifest, load_manifest, read_row_image


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("src")
    syn = synth.generate(
        base / "synth", n_per_assay=12, size=40, seed=0, assays=["nuclei_1ch", "cellpaint_3ch"]
    )
    real = bundled.prepare(base / "real")
    return [syn, real]


def test_balanced_seeded_resumable(sources, tmp_path):
    out = tmp_path / "corpus"
    info = build_corpus(
        sources, out, per_source=5, size=24, seed=1, shards=True, shard_size=8, progress=False
    )
    assert info["per_source"] == {"cellpaint_3ch": 5, "dsb2018_nuclei": 5, "ihc_hed": 5, "nuclei_1ch": 5}
    assert info["written"] == 20 and info["skipped"] == 0
    assert info["channel_counts"] == {1: 10, 3: 10}
    m = out / "manifest.csv"
    assert check_manifest(m) == []
    df = load_manifest(m)
    img = read_row_image(df.iloc[0], out)
    assert img.shape[1:] == (24, 24) and img.min() == 0 and img.max() == 65535  # normalised after resizing
    assert (out / "summary.png").stat().st_size > 0
    shards = json.loads((out / "shards" / "shards.json").read_text())
    assert shards["n_samples"] == 20
    # same seed -> same draw; a different seed draws other images
    again = build_corpus(sources, tmp_path / "c2", per_source=5, size=24, seed=1, progress=False)
    assert sorted(load_manifest(again["manifest"])["image_id"]) == sorted(df["image_id"])
    other = build_corpus(sources, tmp_path / "c3", per_source=5, size=24, seed=2, progress=False)
    assert sorted(load_manifest(other["manifest"])["image_id"]) != sorted(df["image_id"])
    # resumable: a re-run skips finished images; a deleted one is rebuilt identically
    victim = out / df.iloc[3]["file"]
    before = victim.read_bytes()
    mtime = (out / df.iloc[0]["file"]).stat().st_mtime_ns
    victim.unlink()
    info = build_corpus(sources, out, per_source=5, size=24, seed=1, progress=False)
    assert info["written"] == 1 and info["skipped"] == 19
    assert victim.read_bytes() == before
    assert (out / df.iloc[0]["file"]).stat().st_mtime_ns == mtime


def test_small_sources(sources, tmp_path):
    info = build_corpus(sources, tmp_path / "c", per_source=80, size=16, seed=0, progress=False)
    assert info["per_source"] == {"cellpaint_3ch": 12, "dsb2018_nuclei": 80, "ihc_hed": 64, "nuclei_1ch": 12}
    info = build_corpus(
        sources, tmp_path / "d", per_source=80, size=16, seed=0, drop_small=True, progress=False
    )
    assert info["per_source"] == {"dsb2018_nuclei": 80}


def test_cli_build_corpus(sources, tmp_path, capsys):
    from chada.cli import main

    rc = main(["data", "build-corpus", "--sources", *map(str, sources), "--per-source", "3", "--size", "16",
               "--out", str(tmp_path / "c"), "--quiet"])  # fmt: skip
    assert rc == 0 and "12 images from 4 sources" in capsys.readouterr().out


# ------------------------------------------------------------------------------- IDR client
def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12), value, dtype=np.uint8) + np.eye(12, dtype=np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


ROUTES = {
    "/api/v0/m/projects/101/datasets/": {"data": [{"@id": 7, "@type": "Dataset", "Name": "d7"}],
                                         "meta": {"offset": 0, "limit": 200, "totalCount": 1}},
    "/api/v0/m/datasets/7/images/": {"data": [{"@id": i, "@type": "Image", "Name": f"im{i}"} for i in (1, 2, 3)],
                                     "meta": {"offset": 0, "limit": 200, "totalCount": 3}},
    "/api/v0/m/screens/202/plates/": {"data": [{"@id": 9, "Name": "plate9"}], "meta": {"totalCount": 1}},
    "/api/v0/m/plates/9/wells/": {"data": [{"@id": 90, "WellSamples": [{"Image": {"@id": 4}}, {"Image": {"@id": 5}}]}],
                                  "meta": {"totalCount": 1}},
}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        path, _, query = self.path.partition("?")
        body, ctype = None, "application/json"
        if path in ROUTES:
            body = json.dumps(ROUTES[path]).encode()
        elif path.startswith("/webgateway/imgData/"):
            iid = int(path.strip("/").split("/")[-1])
            n_c = 2 if iid != 3 else 1
            body = json.dumps({"id": iid, "meta": {"imageName": f"im{iid}"},
                               "size": {"width": 12, "height": 12, "z": 1, "t": 1, "c": n_c},
                               "channels": [{"label": lab} for lab in ("DAPI", "GFP")[:n_c]]}).encode()  # fmt: skip
        elif path.startswith("/webgateway/render_image/"):
            c = int(dict(kv.split("=") for kv in query.split("&"))["c"])
            body, ctype = _png(40 * c), "image/png"
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def idr_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_idr_client_and_download(idr_server, tmp_path):
    from chada.data.idr import IDRClient, download_study

    client = IDRClient(idr_server)
    assert client.project_image_ids(101) == [1, 2, 3]
    assert client.screen_image_ids(202) == [4, 5]
    assert client.image_data(2)["size"]["c"] == 2
    m = download_study(client, "project:101", tmp_path / "idr", n_images=3, seed=0, progress=False)
    assert check_manifest(m) == []
    df = load_manifest(m)
    assert sorted(df["channel_names"]) == ["DAPI", "DAPI;GFP", "DAPI;GFP"]
    assert set(df["study"]) == {"idr_project_101"}
    two = df[df["channel_names"] == "DAPI;GFP"].iloc[0]
    img = read_row_image(two, m.parent)
    assert img.shape == (2, 12, 12) and img[1].max() == 81  # channel 2 rendered at 80 + eye
    info = build_corpus([m], tmp_path / "corpus", per_source=2, size=8, seed=0, progress=False)
    assert info["per_source"] == {"idr_project_101": 2}
    with pytest.raises(ValueError, match="project:ID"):
        download_study(client, "study101", tmp_path / "x", 1)
    with pytest.raises(ConnectionError, match="IDR request failed"):
        IDRClient(idr_server).get_json("/api/v0/m/projects/999/datasets/")


def test_cli_build_corpus_idr(idr_server, tmp_path):
    from chada.cli import main

    rc = main(["data", "build-corpus", "--idr", "screen:202", "--idr-url", idr_server, "--per-source", "2",
               "--size", "8", "--out", str(tmp_path / "c"), "--quiet"])  # fmt: skip
    assert rc == 0
    assert load_manifest(tmp_path / "c" / "manifest.csv")["dataset"].tolist() == ["idr_screen_202"] * 2
