"""`coverwatch fetch`: downloads from a real HTTP server on 127.0.0.1, nothing else is ever contacted."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from pipeline.errors import FetchError
from pipeline.fetch import fetch_to_inbox
from tests.conftest import COCO_IMAGES, run_cli

JPEG_PATH = COCO_IMAGES / "000000000009.jpg"
HTML = b"<!doctype html><html><body>not a cover</body></html>"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler: no thread outlives the tests
    stop = threading.Event()
    jpeg = b""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):
        pass

    def do_GET(self):
        try:
            self._route(self.path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should for slow, huge and endless responses

    def _route(self, path: str) -> None:
        jpeg, stop = self.server.jpeg, self.server.stop
        if path.startswith("/img/"):
            self._send(200, jpeg)
        elif path.startswith("/r/"):
            n = int(path[3:])
            self._send(200, jpeg) if n == 0 else self._redirect(f"/r/{n - 1}")
        elif path == "/loop":
            self._redirect("/loop")
        elif path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/slow":
            stop.wait(5)
        elif path == "/drip":
            self._head(200, {"Content-Length": "10000"})
            while not stop.wait(0.05):
                self.wfile.write(b"x")
        elif path == "/truncated":
            self._head(200, {"Content-Length": str(len(jpeg))})
            self.wfile.write(jpeg[: len(jpeg) // 2])
        elif path == "/chunked-drop":
            self._head(200, {"Transfer-Encoding": "chunked"})
            self.wfile.write(b"%x\r\n%s\r\n" % (1000, jpeg[:1000]))
        elif path == "/huge-declared":
            self._send(200, jpeg)
        elif path == "/huge-undeclared":
            self._head(200, {})
            self.wfile.write(jpeg)
        elif path == "/html":
            self._send(200, HTML)
        else:
            self._send(404, b"not found", content_type="text/plain")

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in {"Content-Type": "image/jpeg", **headers}.items():
            self.send_header(k, v)
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str = "image/jpeg") -> None:
        self._head(status, {"Content-Type": content_type, "Content-Length": str(len(body))})
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._head(302, {"Location": location, "Content-Length": "0"})


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return JPEG_PATH.read_bytes()


@pytest.fixture(scope="module")
def server(jpeg):
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.stop, srv.jpeg = threading.Event(), jpeg
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    d = tmp_path / "inbox"
    d.mkdir()
    return d


def fetch(server, path: str, inbox: Path, **kw) -> Path:
    kw.setdefault("max_bytes", 10_000_000)
    kw.setdefault("timeout", 5.0)
    return fetch_to_inbox(server.url + path, inbox, **kw)


def fails(code: str, server, path: str, inbox: Path, **kw) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch(server, path, inbox, **kw)
    assert info.value.code == code, info.value
    assert list(inbox.iterdir()) == []  # no final file, no temp file either
    return info.value


def test_downloads_a_jpeg_under_its_own_name(server, inbox, jpeg):
    saved = fetch(server, "/img/cover.jpg", inbox)
    assert saved == inbox / "cover.jpg"
    assert saved.read_bytes() == jpeg
    assert sorted(p.name for p in inbox.iterdir()) == ["cover.jpg"]


@pytest.mark.parametrize(("path", "name"), [
    ("/img/noext", "noext.jpg"),
    ("/img/wrong.png", "wrong.jpg"),
    ("/img/cover.JPEG", "cover.JPEG"),
    ("/img/evil.py", "evil.py.jpg"),
    ("/img/%ED%91%9C%EC%A7%80.jpg", "표지.jpg"),
    ("/img/표지 사진.jpg", "표지 사진.jpg"),
    ("/img/..%2F..%2Fetc%2Fpasswd", "passwd.jpg"),
    ("/img/../../etc/passwd", "passwd.jpg"),
    ("/img/..%5C..%5Cwindows%5Cwin.ini", "win.ini.jpg"),
    ("/img/evil%00.jpg", "evil.jpg"),
    ("/img/.hidden.jpg", "hidden.jpg"),
    ("/img/cover.jpg?size=large#top", "cover.jpg"),
])
def test_names_are_safe_and_match_the_format(server, inbox, jpeg, path, name):
    saved = fetch(server, path, inbox)
    assert saved == inbox / name
    assert saved.read_bytes() == jpeg
    assert [p.name for p in inbox.iterdir()] == [name]


@pytest.mark.parametrize("path", ["/img/", "/img/%2e%2e", "/img/..."])
def test_no_usable_name_falls_back_to_the_content_hash(server, inbox, jpeg, path):
    saved = fetch(server, path, inbox)
    assert saved.name == f"download-{hashlib.sha256(jpeg).hexdigest()[:8]}.jpg"


def test_never_overwrites_a_file_in_the_inbox(server, inbox, jpeg):
    (inbox / "cover.jpg").write_bytes(b"mine")
    first = fetch(server, "/img/cover.jpg", inbox)
    second = fetch(server, "/img/cover.jpg", inbox)
    assert (first.name, second.name) == ("cover-1.jpg", "cover-2.jpg")
    assert (inbox / "cover.jpg").read_bytes() == b"mine"
    assert first.read_bytes() == second.read_bytes() == jpeg


def test_follows_redirects_up_to_the_limit(server, inbox, jpeg):
    assert fetch(server, "/r/5", inbox, max_redirects=5).read_bytes() == jpeg
    (inbox / "5.jpg").unlink()
    fails("too_many_redirects", server, "/r/6", inbox, max_redirects=5)


def test_an_endless_redirect_loop_stops(server, inbox):
    fails("too_many_redirects", server, "/loop", inbox)


def test_a_redirect_to_another_scheme_is_refused(server, inbox):
    fails("bad_url", server, "/to-file", inbox)


def test_a_server_that_does_not_answer_times_out(server, inbox):
    fails("timeout", server, "/slow", inbox, timeout=0.3)


def test_a_slow_drip_hits_the_overall_deadline(server, inbox):
    # Each byte arrives well inside the 0.5 s socket timeout; only the deadline ends it.
    fails("timeout", server, "/drip", inbox, timeout=0.5, deadline=0.6)


@pytest.mark.parametrize("path", ["/truncated", "/chunked-drop"])
def test_a_truncated_body_is_an_error(server, inbox, path):
    fails("truncated", server, path, inbox)


@pytest.mark.parametrize("path", ["/huge-declared", "/huge-undeclared"])
def test_the_size_cap_holds_with_or_without_content_length(server, inbox, path):
    err = fails("too_large", server, path, inbox, max_bytes=1000)
    assert "1000" in str(err)


def test_html_served_as_jpeg_is_not_an_image(server, inbox):
    fails("not_an_image", server, "/html", inbox)


def test_http_errors(server, inbox):
    err = fails("http_error", server, "/missing", inbox)
    assert "404" in str(err)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.jpg", "file:///etc/passwd", "http:///a.jpg", "cover.jpg",
                                 "http://127.0.0.1:99999/a.jpg", "http://127.0.0.1/a\nb.jpg"])
def test_bad_urls_are_refused_before_any_connection(inbox, url):
    with pytest.raises(FetchError) as info:
        fetch_to_inbox(url, inbox, max_bytes=1000)
    assert info.value.code == "bad_url"
    assert list(inbox.iterdir()) == []


def test_a_closed_port_is_unreachable(inbox):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError) as info:
        fetch_to_inbox(f"http://127.0.0.1:{port}/a.jpg", inbox, max_bytes=1000, timeout=2)
    assert info.value.code == "unreachable"
    assert list(inbox.iterdir()) == []


def test_cli_fetch_reports_each_url_and_exits_2_on_any_failure(server, tmp_path, jpeg):
    assert run_cli("init", str(tmp_path)).returncode == 0
    good, bad = server.url + "/img/cover.jpg", server.url + "/html"
    r = run_cli("fetch", "-c", str(tmp_path / "coverwatch.yaml"), bad, good)
    assert r.returncode == 2, r
    assert r.stdout.splitlines() == [str(tmp_path / "inbox" / "cover.jpg")]
    err = r.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith(f"fetch: {bad}: not_an_image"), r.stderr
    assert (tmp_path / "inbox" / "cover.jpg").read_bytes() == jpeg
    assert [p.name for p in (tmp_path / "inbox").iterdir()] == ["cover.jpg"]
