"""`python -m snnlm.download NAME`: fetch a GPT-2 checkpoint and its tokenizer files from the Hugging Face hub.

Each file streams into a hidden `.FILE.part` beside its destination, so an interrupted download resumes
where it stopped (HTTP Range). A finished file is checked against the size the server announced and, for
files the hub stores in Git LFS, against the sha256 it sends as the ETag; only then is it renamed into place.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shlex
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from snnlm.errors import ArgumentParser, SnnlmError, cli_main

REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
# Small files first, so a wrong endpoint or repository fails before the long download starts.
FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors")
DEFAULT_ENDPOINT = "https://huggingface.co"

_CHUNK = 1 << 20
_TIMEOUT_S = 60
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+)")


def download_model(name: str, directory: str | os.PathLike, endpoint: str | None = None,
                   progress: bool = True) -> Path:
    """Download checkpoint `name` (a key of REPOS) into `directory` and return the directory.

    `endpoint` defaults to $HF_ENDPOINT, else https://huggingface.co. Files already present with the size
    the server reports are kept; partial downloads left by an earlier run are resumed.
    """
    if name not in REPOS:
        raise SnnlmError(f"unknown model {name!r}; choose one of: {', '.join(REPOS)}")
    base = f"{_resolve_endpoint(endpoint)}/{REPOS[name]}/resolve/main"
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SnnlmError(f"cannot create directory {directory}: {e.strerror or e}") from e
    for filename in FILES:
        _download_file(f"{base}/{filename}", directory / filename, progress)
    return directory


def _resolve_endpoint(endpoint: str | None) -> str:
    # Same precedence as huggingface_hub, so a mirror configured for it works here too.
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
        raise SnnlmError(f"endpoint must be an http:// or https:// URL, got {endpoint!r}")
    return endpoint


def _download_file(url: str, dest: Path, progress: bool) -> None:
    if dest.exists() and dest.stat().st_size == _remote_size(url):
        return
    part = dest.with_name(f".{dest.name}.part")
    expected = _fetch(url, part, dest.name, progress)
    if expected is not None:
        actual = _sha256_of(part)
        if actual != expected:
            part.unlink()
            raise SnnlmError(f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; "
                             "the corrupt download was deleted, run again")
    # No directory fsync needed: if a crash loses the rename, the complete part file is still there
    # and the next run finishes it without downloading anything.
    os.replace(part, dest)


def _remote_size(url: str) -> int | None:
    response, _ = _request(url, method="HEAD")
    with response:
        return _content_length(response.headers)


def _fetch(url: str, part: Path, label: str, progress: bool) -> str | None:
    """Stream `url` into `part`, resuming from what it already holds; return the sha256 the server
    vouches for, or None if it sent none."""
    offset = part.stat().st_size if part.exists() else 0
    response, sha256 = _request(url, offset=offset)
    if response.status == 416:
        response.close()
        _, total = _content_range(response.headers.get("Content-Range"))
        if total == offset:
            return sha256  # an earlier run got every byte but stopped before the rename
        part.unlink()
        offset = 0
        response, sha256 = _request(url)
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise SnnlmError(f"{url} answered a request for bytes {offset}- with Content-Range "
                                 f"{response.headers.get('Content-Range')!r}")
        else:
            offset, total = 0, _content_length(response.headers)
        _stream(response, part, offset, total, url, label, progress)
    size = part.stat().st_size
    if total is not None and size != total:
        raise SnnlmError(f"download of {url} stopped after {size} of {total} bytes; "
                         f"the partial file {part} is kept, run again to resume")
    return sha256


def _stream(response, part: Path, offset: int, total: int | None, url: str, label: str,
            progress: bool) -> None:
    try:
        f = open(part, "ab" if offset else "wb")
    except OSError as e:
        raise SnnlmError(f"cannot write {part}: {e.strerror or e}") from e
    with f, tqdm(total=total, initial=offset, desc=label, unit="B", unit_scale=True,
                 unit_divisor=1024, disable=not progress) as bar:
        try:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise SnnlmError(f"download of {url} failed after {f.tell()} bytes ({e}); "
                             f"the partial file {part} is kept, run again to resume") from e
        f.flush()
        os.fsync(f.fileno())


class _HubRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does (request headers such as Range are carried over), but keeps a
    HEAD a HEAD and remembers the hub's X-Linked-ETag.

    The hub answers for an LFS file with a redirect to a CDN; the file's sha256 is in that redirect's
    X-Linked-ETag, not in the CDN's reply.
    """

    def __init__(self) -> None:
        self.linked_etag: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.linked_etag = self.linked_etag or headers.get("X-Linked-ETag")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()  # Python before 3.13 turns a redirected HEAD into a GET
        return new


def _request(url: str, *, method: str = "GET", offset: int = 0):
    """Open `url` (from byte `offset` on); return the response and the sha256 the server vouches for.

    A 416 answer to a range request comes back as the response; every other failure is a SnnlmError.
    """
    redirects = _HubRedirects()
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if not (e.code == 416 and offset):
            e.close()
            raise SnnlmError(f"HTTP {e.code} {e.reason} for {url}") from e
        response = e
    except urllib.error.URLError as e:
        raise _unreachable(url, e.reason) from e
    except (OSError, http.client.HTTPException) as e:
        raise _unreachable(url, e) from e
    etag = (redirects.linked_etag or response.headers.get("X-Linked-ETag")
            or response.headers.get("ETag"))
    return response, _sha256_from_etag(etag)


def _unreachable(url: str, reason: object) -> SnnlmError:
    reason = getattr(reason, "strerror", None) or reason
    return SnnlmError(f"cannot reach {url}: {reason}; check your network or set HF_ENDPOINT")


def _sha256_from_etag(etag: str | None) -> str | None:
    # Only LFS files carry a sha256 ETag; others carry a git blob sha1 or an opaque CDN tag, which
    # are not checksums we can recompute, so they are ignored.
    if etag is None:
        return None
    value = etag.strip().removeprefix("W/").strip('"').lower()
    return value if _SHA256.fullmatch(value) else None


def _content_length(headers) -> int | None:
    value = (headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None for what it does not say."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start is not None else None), int(total)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: download a checkpoint and say how to run it."""
    parser = ArgumentParser(
        prog="python -m snnlm.download",
        description="Download a pretrained GPT-2 checkpoint and its tokenizer from the Hugging Face hub. "
                    "Interrupted downloads resume when run again.")
    parser.add_argument("name", choices=list(REPOS), help="which checkpoint")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files (default: weights/NAME)")
    parser.add_argument("--endpoint", default=None,
                        help=f"hub URL (default: $HF_ENDPOINT, else {DEFAULT_ENDPOINT})")
    args = parser.parse_args(argv)
    directory = download_model(args.name, args.dir or Path("weights") / args.name, endpoint=args.endpoint)
    print(f"{args.name} is in {directory}")
    print(f"run it with: python -m snnlm.generate --weights {shlex.quote(str(directory))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
