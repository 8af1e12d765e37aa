"""`coverwatch fetch`: downloads from a real HTTP server on 127.0.0.1, nothing else is ever contacted."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import httpx
import pytest

from pipeline.errors import FetchError
from pipeline.intake.fetch import fetch_to_inbox
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
        # httpx removes dot segments before sending (RFC 3986 5.2.4, as curl and browsers do): the request for
        # /img/../../etc/passwd arrives as /etc/passwd; its name still comes from the URL the user gave.
        if path.startswith("/img/") or path == "/etc/passwd":
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


# The same function through httpx.MockTransport: what the network path does that a local server shows poorly.

def mock_fetch(handler, inbox: Path, url: str = "http://covers.example/a/cover.jpg", **kw) -> Path:
    kw.setdefault("max_bytes", 10_000_000)
    kw.setdefault("timeout", 5.0)
    return fetch_to_inbox(url, inbox, transport=httpx.MockTransport(handler), **kw)


def _streamed(data: bytes):
    """A body that arrives as a network one does (httpx reads a bytes body at once; fetch reads raw chunks)."""
    async def body():
        yield data
    return body()


def mock_fails(code: str, handler, inbox: Path, **kw) -> FetchError:
    with pytest.raises(FetchError) as info:
        mock_fetch(handler, inbox, **kw)
    assert info.value.code == code, info.value
    assert list(inbox.iterdir()) == []
    return info.value


def test_mock_sends_our_headers_and_resolves_a_relative_redirect(inbox, jpeg):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/a/cover.jpg":
            return httpx.Response(303, headers={"Location": "../b/real.jpg"})
        return httpx.Response(200, content=_streamed(jpeg))

    assert mock_fetch(handler, inbox) == inbox / "cover.jpg"  # the name the user asked for, not the redirect's
    assert [str(r.url) for r in seen] == ["http://covers.example/a/cover.jpg", "http://covers.example/b/real.jpg"]
    assert {(k, seen[0].headers[k]) for k in ("User-Agent", "Accept", "Accept-Encoding")} == {
        ("User-Agent", "coverwatch-fetch"), ("Accept", "image/*"), ("Accept-Encoding", "identity")}


@pytest.mark.parametrize("location", ["ftp://covers.example/a.jpg", "file:///etc/passwd"])
def test_mock_a_redirect_hop_is_checked_before_it_is_sent(inbox, location):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(302, headers={"Location": location})

    mock_fails("bad_url", handler, inbox)
    assert len(seen) == 1


def test_mock_a_redirect_without_location_is_an_http_error(inbox):
    err = mock_fails("http_error", lambda request: httpx.Response(302), inbox)
    assert "302" in str(err)


def _endless(pulled: list[int], chunk: bytes = b"x" * 1000):
    async def body():
        while True:
            pulled[0] += 1
            yield chunk
    return body()


def test_mock_a_huge_content_length_is_refused_before_the_body_is_read(inbox):
    pulled = [0]
    mock_fails("too_large", lambda request: httpx.Response(
        200, headers={"Content-Length": str(10**15)}, content=_endless(pulled)), inbox, max_bytes=1000)
    assert pulled == [0]


def test_mock_an_endless_body_stops_at_the_cap(inbox):
    pulled = [0]
    mock_fails("too_large", lambda request: httpx.Response(200, content=_endless(pulled)), inbox, max_bytes=5000)
    assert pulled == [6]  # five chunks fit, the sixth passes the cap, nothing more is read


def test_mock_headers_that_never_come_are_cut_at_the_deadline(inbox):
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)  # no read timeout fires inside a transport: only the deadline ends this
        return httpx.Response(200)

    err = mock_fails("timeout", handler, inbox, deadline=0.2)
    assert "deadline" in str(err)


@pytest.mark.parametrize(("exc", "code"), [
    (httpx.ConnectError("connection refused"), "unreachable"),
    (httpx.ConnectTimeout("connect timed out"), "timeout"),
    (httpx.ReadTimeout("read timed out"), "timeout"),
    (httpx.RemoteProtocolError("illegal status line"), "http_error"),
])
def test_mock_transport_errors_map_to_codes(inbox, exc, code):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    mock_fails(code, handler, inbox)


def test_mock_a_body_cut_off_mid_way_is_truncated(inbox, jpeg):
    async def body():
        yield jpeg[:1000]
        raise httpx.ReadError("connection reset by peer")

    mock_fails("truncated", lambda request: httpx.Response(200, content=body()), inbox)
