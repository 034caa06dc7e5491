"""The download path, against a local HTTP server that supports Range and can cut connections."""

import hashlib
import http.server
import threading

import pytest

from pico.download import download, ensure_source
from pico.errors import DataError

PAYLOAD = ("Once upon a time there was a story.\n<|endoftext|>\n" * 4000).encode()


class Server:
    def __init__(self):
        self.requests: list[dict] = []
        self.cut_after: int | None = None  # bytes to send before dropping the connection (once)
        self.ignore_range = False
        self.files = {"/TinyStories-train.txt": PAYLOAD, "/TinyStories-valid.txt": PAYLOAD[:5000]}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    n, server.cut_after = server.cut_after, None
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # drop mid-body
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    server.cut_after = 10_000
    dest = tmp_path / "train.txt"
    digest = download(f"{server.url}/TinyStories-train.txt", dest, backoff_s=0, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert digest == hashlib.sha256(PAYLOAD).hexdigest()
    assert [r["range"] for r in server.requests] == [None, "bytes=10000-"]
    assert not (tmp_path / "train.txt.part").exists()


def test_download_resumes_a_part_file_from_an_earlier_run(server, tmp_path):
    dest = tmp_path / "train.txt"
    (tmp_path / "train.txt.part").write_bytes(PAYLOAD[:777])
    download(f"{server.url}/TinyStories-train.txt", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0]["range"] == "bytes=777-"


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "train.txt"
    (tmp_path / "train.txt.part").write_bytes(b"garbage that must not stay")
    download(f"{server.url}/TinyStories-train.txt", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_and_404_are_clear_errors(server, tmp_path):
    with pytest.raises(DataError, match="does not match the expected"):
        download(f"{server.url}/TinyStories-train.txt", tmp_path / "a.txt", expected_sha256="0" * 64, progress=False)
    assert not (tmp_path / "a.txt").exists()
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{server.url}/missing.txt", tmp_path / "b.txt", progress=False)


def test_ensure_source_downloads_records_checksums_and_then_uses_local(server, tmp_path):
    source = tmp_path / "raw"
    files = {"train/TinyStories-train.txt": "TinyStories-train.txt", "valid/TinyStories-valid.txt": "TinyStories-valid.txt"}
    fetched = ensure_source(source, server.url, files, {}, progress=False)
    assert set(fetched) == set(files)
    assert (source / "train" / "TinyStories-train.txt").read_bytes() == PAYLOAD
    sums = (source / "SHA256SUMS").read_text()
    assert hashlib.sha256(PAYLOAD).hexdigest() in sums
    n = len(server.requests)
    assert ensure_source(source, server.url, files, {}, progress=False) == {}  # present: no network
    assert len(server.requests) == n


def test_ensure_source_finishes_an_interrupted_multi_file_download(server, tmp_path):
    source = tmp_path / "raw"
    (source / "train").mkdir(parents=True)
    (source / "train" / "TinyStories-train.txt").write_bytes(PAYLOAD)  # first file done, then killed
    files = {"train/TinyStories-train.txt": "TinyStories-train.txt", "valid/TinyStories-valid.txt": "TinyStories-valid.txt"}
    ensure_source(source, server.url, files, {}, progress=False)
    assert [r["path"] for r in server.requests] == ["/TinyStories-valid.txt"]
    assert (source / "SHA256SUMS").exists()
