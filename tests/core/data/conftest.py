"""Fixtures of the data tests: every test gets its own empty cache folder (`$LOP_CACHE`), and the
download tests a local HTTP server that serves a folder on 127.0.0.1 at an ephemeral port,
records the paths asked for, and is stopped when the test ends."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.data.cache import CACHE_VARIABLE


@pytest.fixture(autouse=True)
def lop_cache(tmp_path_factory, monkeypatch):
    """A fresh `$LOP_CACHE` (not yet created) per test, so no test reads or fills the user's."""
    folder = tmp_path_factory.mktemp("lop_cache") / "cache"
    monkeypatch.setenv(CACHE_VARIABLE, str(folder))
    return folder


class FileServer:
    """`folder` over HTTP on 127.0.0.1; `url(name)` addresses a file, `requests` lists the paths
    asked for, `stop()` shuts it down (after which connections are refused)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def send_head(self):
                server.requests.append(self.path)
                return super().send_head()

            def log_message(self, format, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=folder))
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
            self.httpd.server_close()


@pytest.fixture
def file_server(tmp_path):
    """A FileServer of the (initially empty) folder `tmp_path/served`, stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = FileServer(folder)
    yield server
    server.stop()
