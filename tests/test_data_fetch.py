"""Fetching upstream files: atomic, sha256-checked (served from loopback here)."""

import pytest

from suite_errors import ChecksumError, DataError
from tasks.data import DataFile, OFFLINE_MIRROR, fetch, locate, sha256_file
from tests.loopback import serve

NAVIGATE = (OFFLINE_MIRROR / "bbh/navigate.json").read_bytes()


def _file(url, sha):
    return DataFile("bbh/navigate.json", sha, url + "/bbh/navigate.json")


def test_fetch_writes_a_checked_file(tmp_path):
    with serve(lambda path: NAVIGATE) as (url, hits):
        expected = sha256_file(OFFLINE_MIRROR / "bbh/navigate.json")
        path = fetch(_file(url, expected), tmp_path)
    assert path.read_bytes() == NAVIGATE and hits == ["/bbh/navigate.json"]


def test_fetch_with_wrong_checksum_leaves_nothing(tmp_path):
    with serve(lambda path: b"{}") as (url, _):
        with pytest.raises(ChecksumError, match="Checksum mismatch"):
            fetch(_file(url, "0" * 64), tmp_path)
    assert list((tmp_path / "bbh").iterdir()) == []


def test_fetch_http_error_names_the_url(tmp_path):
    with serve(lambda path: b"gone", status=404) as (url, _):
        with pytest.raises(DataError, match=r"Could not download http://127\.0\.0\.1:\d+/bbh/navigate\.json"):
            fetch(_file(url, "0" * 64), tmp_path)


def test_locate_fetches_only_when_downloads_are_allowed(tmp_path, monkeypatch):
    with serve(lambda path: NAVIGATE) as (url, hits):
        file = _file(url, sha256_file(OFFLINE_MIRROR / "bbh/navigate.json"))
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        with pytest.raises(DataError, match="Missing data file"):
            locate(file, tmp_path)
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
        assert locate(file, tmp_path).read_bytes() == NAVIGATE
        assert locate(file, tmp_path, allow_download=False).is_file()  # present now: no fetch
    assert len(hits) == 1
