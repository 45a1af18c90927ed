"""Google Drive downloads through the REAL ``gdown.download`` of whatever gdown is installed.

Colab ships gdown 5.2.2 (``fuzzy``, no ``timeout``); requirements.txt pins the newest (6.x:
``timeout``, no ``fuzzy``). These tests pass unchanged under both: run them under 5.2.2 with
``pip install --target /tmp/gdown522 gdown==5.2.2 --no-deps`` and
``PYTHONPATH=/tmp/gdown522 .venv/bin/python -m pytest tests/data/test_gdown_compat.py``.

No network: ``requests.adapters.HTTPAdapter.send`` is replaced by a fake Google Drive (below)
that answers like the real one: drive.google.com/uc?id= redirects to drive.usercontent.google.com,
which sends the file as an attachment (or, for a big file, first the "can't scan for viruses"
page whose form gdown submits); share links are web pages; unknown ids are a 404 page; private
files redirect to the Google sign-in page.
"""
import functools
import importlib
import inspect
import io
import urllib.parse
import zipfile
from pathlib import Path

import gdown
import pytest
import requests
import urllib3

import helpers.data.acquire as acquire
from helpers.data.acquire import acquire_dataset
from helpers.data.dataset import DatasetError
from helpers.data.demo_data import make_demo_dataset

FILE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"  # 33 characters, like real Drive ids
PRIVATE_ID = "1PrIvAtEfIlEnOtShArEdWiThAnYoNe99"
MISSING_ID = "1NoSuChFiLeOnDrIvEaTaLlXyZ0123456"
SHARE_URL = f"https://drive.google.com/file/d/{FILE_ID}/view?usp=sharing"
GDOWN_PARAMS = inspect.signature(gdown.download).parameters
# these depend on the installed versions: the Colab-like env runs them (`-m colab`)
pytestmark = pytest.mark.colab


@pytest.mark.parametrize("version", [gdown.__version__], ids=lambda v: f"gdown-{v}")
def test_gdown_version_under_test(version):
    print(f"gdown {gdown.__version__} from {Path(gdown.__file__).parent}")  # shows with -s / -rA
    major = int(gdown.__version__.split(".")[0])
    assert major >= 5
    # the two behaviours these tests must cover; if a new gdown changes both, revisit _gdown_kwargs
    assert ("fuzzy" in GDOWN_PARAMS) or ("timeout" in GDOWN_PARAMS)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0)


@pytest.fixture(scope="module")
def demo_zip(demo, tmp_path_factory):
    path = tmp_path_factory.mktemp("zip") / "hw3-data-release.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(demo.rglob("*")):
            if p.is_file():
                zf.write(p, "hw3-data-release/" + str(p.relative_to(demo)))
    return path.read_bytes()


def listing(root):
    """The dataset's files and bytes (not acquire's own record of where the copy came from)."""
    return sorted((str(p.relative_to(root)), p.read_bytes()) for p in Path(root).rglob("*")
                  if p.is_file() and p.name != acquire.RECORD_NAME)


def leftovers(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".partial")]


def _html(title, body=""):
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
            f"<body>{body}</body></html>\n").encode()


class FakeDrive:
    """Stands in for Google's servers at the transport layer (``HTTPAdapter.send``)."""

    def __init__(self, payload: bytes, big: bool = False, fail: Exception | None = None):
        self.payload, self.big, self.fail = payload, big, fail
        self.requests: list[str] = []  # every URL asked for
        self.served: list[str] = []  # file ids whose bytes were sent
        self.timeouts: list = []  # the timeout requests passed down

    def send(self, adapter, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        self.requests.append(request.url)
        self.timeouts.append(timeout)
        if self.fail is not None:
            raise self.fail
        status, headers, body = self.route(request.url)
        headers = {"Content-Length": str(len(body)), **headers}
        raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers=headers, status=status,
                                   reason={200: "OK", 302: "Found", 303: "See Other", 404: "Not Found"}[status],
                                   preload_content=False, decode_content=False)
        return adapter.build_response(request, raw)

    def route(self, url):
        u = urllib.parse.urlsplit(url)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        if u.hostname == "drive.google.com" and u.path == "/uc":
            return 303, {"Location": "https://drive.usercontent.google.com/download?id="
                                     f"{q.get('id', '')}&export=download",
                         "Content-Type": "text/html; charset=UTF-8"}, b""
        if u.hostname == "drive.usercontent.google.com" and u.path == "/download":
            fid = q.get("id")
            if fid == PRIVATE_ID:
                return 302, {"Location": "https://accounts.google.com/ServiceLogin?service=wissen&continue="
                                         + urllib.parse.quote(url, safe=""),
                             "Content-Type": "text/html; charset=UTF-8"}, b""
            if fid != FILE_ID:
                return 404, {"Content-Type": "text/html; charset=UTF-8"}, _html(
                    "Error 404 (Not Found)!!1", "<p><b>404.</b> <ins>That's an error.</ins>\n"
                    "<p>The requested URL was not found on this server. <ins>That's all we know.</ins>")
            if self.big and q.get("confirm") != "t":
                form = ('<form id="download-form" action="https://drive.usercontent.google.com/download" '
                        'method="get"><input type="submit" id="uc-download-link" class="goog-inline-block '
                        'jfk-button jfk-button-action" value="Download anyway"/>'
                        f'<input type="hidden" name="id" value="{FILE_ID}">'
                        '<input type="hidden" name="export" value="download">'
                        '<input type="hidden" name="confirm" value="t">'
                        '<input type="hidden" name="uuid" value="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"></form>')
                return 200, {"Content-Type": "text/html; charset=utf-8"}, _html(
                    "Google Drive - Virus scan warning",
                    "<p class=\"uc-warning-subcaption\">Google Drive can't scan this file for viruses.</p>\n"
                    + form)
            self.served.append(fid)
            return 200, {"Content-Type": "application/octet-stream",
                         "Content-Disposition": 'attachment; filename="hw3-data-release.zip"',
                         "Last-Modified": "Tue, 15 Apr 2025 08:00:00 GMT",
                         "Accept-Ranges": "bytes",
                         "Cache-Control": "no-cache, no-store, max-age=0, must-revalidate",
                         "X-Goog-Hash": "crc32c=AAAAAA=="}, self.payload
        if u.hostname == "accounts.google.com":
            return 200, {"Content-Type": "text/html; charset=utf-8"}, _html(
                "Google Drive: Sign-in", "<p>Sign in to continue to Google Drive</p>")
        if u.hostname == "drive.google.com" and u.path.startswith("/file/d/"):
            return 200, {"Content-Type": "text/html; charset=utf-8"}, _html(
                "hw3-data-release.zip - Google Drive", "<div>viewer</div>")
        return 404, {"Content-Type": "text/html; charset=UTF-8"}, _html("Error 404 (Not Found)!!1")


@pytest.fixture()
def fake_drive(monkeypatch, tmp_path, demo_zip):
    """Install a FakeDrive; returns a function to reconfigure it (big=..., fail=...)."""
    # gdown keeps cookies in ~/.cache/gdown/cookies.txt: keep the tests out of the home folder
    module = importlib.import_module("gdown.download")
    (tmp_path / "home" / ".cache" / "gdown").mkdir(parents=True)
    monkeypatch.setattr(module, "home", str(tmp_path / "home"), raising=False)  # gdown 5
    monkeypatch.setattr(module, "DEFAULT_COOKIES_FILE",  # gdown 6
                        str(tmp_path / "home" / ".cache" / "gdown" / "cookies.txt"), raising=False)
    drive = FakeDrive(demo_zip)

    def send(adapter, request, **kw):
        return drive.send(adapter, request, **kw)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return drive


SOURCES = {
    "id": FILE_ID,
    "share-url": SHARE_URL,
    "share-url-drive-link": f"https://drive.google.com/file/d/{FILE_ID}/view?usp=drive_link",
    "url-without-view": f"https://drive.google.com/file/d/{FILE_ID}",
    "open-url": f"https://drive.google.com/open?id={FILE_ID}",
}


@pytest.mark.parametrize("big", [False, True], ids=["small", "virus-scan-page"])
@pytest.mark.parametrize("source", list(SOURCES.values()), ids=list(SOURCES))
def test_drive_download_gives_the_dataset(fake_drive, demo, tmp_path, source, big):
    fake_drive.big = big
    dest = acquire_dataset(source, tmp_path / "ws" / "data", manifest=demo / "data_manifest.csv", quiet=True)
    assert listing(dest) == listing(demo)
    assert fake_drive.served == [FILE_ID]
    assert all(urllib.parse.urlsplit(u).hostname != "drive.google.com" or "/file/d/" not in u
               for u in fake_drive.requests), "the share page was fetched instead of the file"
    # the 60 s timeout reaches requests where gdown takes one (6.3+), and gdown 5 is still called
    want = 60 if "timeout" in GDOWN_PARAMS else None
    assert fake_drive.timeouts and set(fake_drive.timeouts) == {want}
    assert leftovers(dest.parent) == []
    # a rerun finds the dataset and does not download again
    assert acquire_dataset(source, dest, manifest=demo / "data_manifest.csv", quiet=True) == dest
    assert fake_drive.served == [FILE_ID]


def test_share_url_through_gdowns_own_url_handling(fake_drive, demo, tmp_path, monkeypatch):
    # a URL we do not read an id from goes to gdown as url=: gdown 5 needs fuzzy=True to find
    # the id of a /file/d/ link (else it saves the web page), gdown 6 always does it
    monkeypatch.setattr(acquire, "drive_file_id", lambda source: None)
    dest = acquire_dataset(SHARE_URL, tmp_path / "data", quiet=True)
    assert listing(dest) == listing(demo)
    assert fake_drive.served == [FILE_ID]


@pytest.mark.parametrize("source", [MISSING_ID, PRIVATE_ID,
                                    f"https://drive.google.com/file/d/{PRIVATE_ID}/view?usp=sharing"],
                         ids=["not-found", "not-shared", "not-shared-url"])
def test_drive_refusal_is_a_clear_error(fake_drive, tmp_path, source):
    with pytest.raises(DatasetError) as err:
        acquire_dataset(source, tmp_path / "data", quiet=True)
    msg = str(err.value)
    assert f"could not download {source!r} from Google Drive (FileURLRetrievalError: " in msg
    assert "'Anyone with the link'" in msg and "download the zip yourself" in msg
    assert fake_drive.served == [] and fake_drive.requests
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_network_error_is_a_clear_error(fake_drive, tmp_path):
    fake_drive.fail = requests.exceptions.ConnectionError("Failed to resolve 'drive.google.com'")
    with pytest.raises(DatasetError, match=r"\(ConnectionError: Failed to resolve 'drive.google.com'\)\. "
                                           "Check the network"):
        acquire_dataset(SHARE_URL, tmp_path / "data", quiet=True)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_programming_error_is_not_reported_as_sharing_advice(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("download() got an unexpected keyword argument 'timeout'")

    monkeypatch.setattr(gdown, "download", broken)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        acquire_dataset(FILE_ID, tmp_path / "data", quiet=True)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_web_page_instead_of_zip_is_a_clear_error(tmp_path, monkeypatch):
    def page(url=None, output=None, **kwargs):
        Path(output).write_bytes(_html("Google Drive - Quota exceeded", "<p>Too many users</p>"))
        return output

    monkeypatch.setattr(gdown, "download", functools.wraps(gdown.download)(page))
    with pytest.raises(DatasetError, match="sent a web page, not the zip.*'Anyone with the link'"):
        acquire_dataset(FILE_ID, tmp_path / "data", quiet=True)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("source", [FILE_ID, SHARE_URL, "https://drive.google.com/uc?export=download",
                                    "https://docs.google.com/document/d/1DoCuMeNtIdDoCuMeNtId0123456789/edit"],
                         ids=["id", "share-url", "url-without-id", "docs-url"])
def test_only_keywords_the_installed_gdown_accepts(fake_drive, tmp_path, monkeypatch, source):
    real = gdown.download
    calls = []

    @functools.wraps(real)  # inspect.signature follows __wrapped__ to the real one
    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(gdown, "download", recording)
    try:
        acquire_dataset(source, tmp_path / "data", quiet=True)
    except DatasetError:
        pass  # only the id and the share URL name a file the fake Drive has
    assert len(calls) == 1
    args, kwargs = calls[0]
    assert args == ()
    assert set(kwargs) <= set(GDOWN_PARAMS), f"gdown {gdown.__version__} has no {set(kwargs) - set(GDOWN_PARAMS)}"
    assert inspect.signature(real).bind(**kwargs)
    assert kwargs.get("timeout") == (60 if "timeout" in GDOWN_PARAMS else None)
    if "url" in kwargs:  # gdown has to find the id itself: gdown 5 only does with fuzzy=True
        assert kwargs.get("fuzzy", False) == ("fuzzy" in GDOWN_PARAMS)
    else:
        assert kwargs["id"] == FILE_ID and "fuzzy" not in kwargs


def test_drive_file_id():
    assert acquire.drive_file_id(FILE_ID) == FILE_ID
    for url in SOURCES.values():
        assert acquire.drive_file_id(url) == FILE_ID, url
    assert acquire.drive_file_id(f"https://drive.google.com/file/u/1/d/{FILE_ID}/edit") == FILE_ID
    assert acquire.drive_file_id(f"https://drive.google.com/uc?export=download&id={FILE_ID}") == FILE_ID
    assert acquire.drive_file_id("https://drive.google.com/uc?export=download") is None
    assert acquire.drive_file_id("hw3.zip") is None
