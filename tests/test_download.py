"""snnlm.download against a fake Hugging Face hub served on 127.0.0.1."""
from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from snnlm.download import download_model, main
from snnlm.errors import SnnlmError

PREFIX = "/openai-community/gpt2/resolve/main/"
MODEL = PREFIX + "model.safetensors"
CDN_MODEL = "/cdn/model.safetensors"


class FakeHub:
    """What the fake server serves, how it misbehaves, and which requests it received."""

    def __init__(self) -> None:
        self.files = {
            MODEL: random.Random(0).randbytes(300_000),
            PREFIX + "config.json": b'{"n_head": 12}',
            PREFIX + "vocab.json": b'{"a": 0}',
            PREFIX + "merges.txt": b"#version: 0.2\na b\n",
        }
        self.files[CDN_MODEL] = self.files[MODEL]
        self.etags = {path: f'"{hashlib.sha1(body).hexdigest()}"' for path, body in self.files.items()}
        self.etags[MODEL] = f'"{hashlib.sha256(self.files[MODEL]).hexdigest()}"'
        self.redirects: dict[str, str] = {}
        self.errors: dict[str, int] = {}
        self.drop_once: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str, str | None]] = []
        self.url = ""

    def gets(self, path: str) -> list[str | None]:
        """The Range header (None if absent) of each GET of `path`."""
        return [rng for method, p, rng in self.requests if p == path and method == "GET"]


class HubHandler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def log_message(self, format, *args) -> None:
        pass

    def _serve(self, send_body: bool) -> None:
        hub: FakeHub = self.server.hub
        hub.requests.append((self.command, self.path, self.headers.get("Range")))
        if self.path in hub.errors:
            self.send_error(hub.errors[self.path])
            return
        if self.path in hub.redirects:
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", hub.redirects[self.path])
            self.send_header("X-Linked-ETag", hub.etags[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in hub.files:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        body = hub.files[self.path]
        start = self._range_start()
        if start is not None and start >= len(body):
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start is None:
            self.send_response(HTTPStatus.OK)
            start = 0
        else:
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", hub.etags[self.path])
        self.end_headers()
        if not send_body:
            return
        if self.path in hub.drop_once:
            hub.drop_once.discard(self.path)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def _range_start(self) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match is None or self.server.hub.ignore_range:
            return None
        return int(match.group(1))


@pytest.fixture
def hub():
    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    server.hub = state
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def assert_complete(hub: FakeHub, directory: Path) -> None:
    for name in ("model.safetensors", "config.json", "vocab.json", "merges.txt"):
        assert (directory / name).read_bytes() == hub.files[PREFIX + name]
    assert not list(directory.glob(".*.part"))


def write_half_part(hub: FakeHub, directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    half = len(hub.files[MODEL]) // 2
    (directory / ".model.safetensors.part").write_bytes(hub.files[MODEL][:half])
    return half


def test_full_download_into_empty_dir(hub, tmp_path):
    directory = download_model("gpt2", tmp_path / "w", endpoint=hub.url, progress=False)
    assert directory == tmp_path / "w"
    assert_complete(hub, directory)
    assert hub.gets(MODEL) == [None]


def test_resume_sends_range_and_appends(hub, tmp_path):
    half = write_half_part(hub, tmp_path)
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert hub.gets(MODEL) == [f"bytes={half}-"]
    assert_complete(hub, tmp_path)


def test_server_ignoring_range_restarts_from_zero(hub, tmp_path):
    hub.ignore_range = True
    (tmp_path / ".model.safetensors.part").write_bytes(b"x" * 1000)
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert hub.gets(MODEL) == ["bytes=1000-"]
    assert_complete(hub, tmp_path)


def test_complete_part_file_answered_416_is_finished(hub, tmp_path):
    (tmp_path / ".model.safetensors.part").write_bytes(hub.files[MODEL])
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert hub.gets(MODEL) == [f"bytes={len(hub.files[MODEL])}-"]
    assert_complete(hub, tmp_path)


def test_part_file_longer_than_remote_is_discarded(hub, tmp_path):
    (tmp_path / ".model.safetensors.part").write_bytes(hub.files[MODEL] + b"junk")
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert_complete(hub, tmp_path)


def test_checksum_mismatch_fails_and_deletes_download(hub, tmp_path):
    hub.etags[MODEL] = f'"{"0" * 64}"'
    with pytest.raises(SnnlmError, match="checksum mismatch.*model.safetensors"):
        download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert not (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / ".model.safetensors.part").exists()


def test_weak_sha256_etag_is_verified_too(hub, tmp_path):
    hub.etags[MODEL] = f'W/"{"A" * 64}"'
    with pytest.raises(SnnlmError, match="checksum mismatch"):
        download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)


@pytest.mark.parametrize("status", [404, 401])
def test_http_error_names_url_and_status(hub, tmp_path, status):
    hub.errors[PREFIX + "vocab.json"] = status
    with pytest.raises(SnnlmError, match=rf"HTTP {status} .*{re.escape(hub.url + PREFIX)}vocab\.json"):
        download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)


def test_connection_refused_is_one_line_exit_2(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["gpt2", "--dir", str(tmp_path), "--endpoint", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"snnlm: error: cannot reach http://127.0.0.1:{port}/openai-community/gpt2/")
    assert "HF_ENDPOINT" in err


def test_interrupted_download_keeps_part_and_resumes(hub, tmp_path):
    hub.drop_once.add(MODEL)
    with pytest.raises(SnnlmError, match="stopped after 150000 of 300000 bytes"):
        download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert (tmp_path / ".model.safetensors.part").stat().st_size == 150_000
    assert not (tmp_path / "model.safetensors").exists()
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert hub.gets(MODEL) == [None, "bytes=150000-"]
    assert_complete(hub, tmp_path)


def test_redirect_keeps_range_and_uses_linked_etag(hub, tmp_path):
    hub.redirects[MODEL] = CDN_MODEL
    hub.etags[CDN_MODEL] = '"cdn-tag"'
    half = write_half_part(hub, tmp_path)
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert hub.gets(CDN_MODEL) == [f"bytes={half}-"]
    assert_complete(hub, tmp_path)

    (tmp_path / "model.safetensors").unlink()
    hub.etags[MODEL] = f'"{"0" * 64}"'
    with pytest.raises(SnnlmError, match="checksum mismatch"):
        download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)


def test_hf_endpoint_env_var_is_honoured(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
    download_model("gpt2", tmp_path, progress=False)
    assert_complete(hub, tmp_path)


def test_complete_files_are_not_downloaded_again(hub, tmp_path):
    hub.redirects[MODEL] = CDN_MODEL
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    hub.requests.clear()
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert {method for method, _, _ in hub.requests} == {"HEAD"}
    assert_complete(hub, tmp_path)


def test_file_with_wrong_size_is_downloaded_again(hub, tmp_path):
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    (tmp_path / "vocab.json").write_bytes(b"{}")
    download_model("gpt2", tmp_path, endpoint=hub.url, progress=False)
    assert_complete(hub, tmp_path)


def test_cli_downloads_and_prints_next_command(hub, tmp_path, capsys):
    directory = tmp_path / "my weights"
    assert main(["gpt2", "--dir", str(directory), "--endpoint", hub.url]) == 0
    out = capsys.readouterr().out
    assert f"python -m snnlm.generate --weights '{directory}'" in out
    assert_complete(hub, directory)


def test_cli_default_dir_is_weights_name(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["gpt2", "--endpoint", hub.url]) == 0
    assert_complete(hub, tmp_path / "weights" / "gpt2")


def test_unknown_model_name_exits_2(capsys):
    assert main(["gpt3"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and err.count("\n") == 1


def test_unwritable_dir_is_one_line_error(hub, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["gpt2", "--dir", str(tmp_path / "file" / "sub"), "--endpoint", hub.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("snnlm: error: cannot create directory") and err.count("\n") == 1


def test_non_http_endpoint_is_rejected(tmp_path):
    with pytest.raises(SnnlmError, match="http"):
        download_model("gpt2", tmp_path, endpoint="ftp://example.com", progress=False)
