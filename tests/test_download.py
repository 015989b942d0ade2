"""The downloader (allen_sr.data.download, .manifest and allen_sr.commands.download) against a
real local HTTP server (tests/allen_stand_in.py).

They prove that, with faults injected, every image ends up byte-identical to the server's; that
no partial file is ever visible under a final ``<id>.jpg`` name; that a run killed with SIGKILL
resumes without fetching finished images again; and that each failure gets a specific message
naming the input. Nothing here talks to the real Allen API.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from allen_stand_in import AllenStandIn  # noqa: E402
from conftest import FullDisk  # noqa: E402

from allen_sr.commands.download import download_main  # noqa: E402
from allen_sr.data import download, manifest  # noqa: E402
from allen_sr.data.allen_urls import STOCK_IMAGE_IDS, Region  # noqa: E402
from allen_sr.data.download import directory_lock, download_images  # noqa: E402
from allen_sr.data.errors import CorruptImageError, DirectoryBusyError, NotAnImageError  # noqa: E402
from allen_sr.data.manifest import (  # noqa: E402
    MANIFEST_NAME,
    TEMP_SUFFIX,
    image_path,
    read_manifest,
    verify_image_file,
)

REPO = Path(__file__).resolve().parents[1]
STAND_IN = Path(__file__).resolve().parent / "allen_stand_in.py"
# Short waits everywhere: a test must never sit in a production-size backoff.
FAST = dict(rate=None, timeout=(2.0, 2.0), retries=3, backoff=0.01, max_backoff=0.05)
FAST_CLI = ["--rate", "0", "--timeout", "2", "--connect_timeout", "2", "--retries", "3",
            "--backoff", "0.01", "--no_progress"]


def assert_identical(server: AllenStandIn, folder: Path, ids: list[int], **params) -> None:
    for image_id in ids:
        assert image_path(folder, image_id).read_bytes() == \
            server.expected_bytes(image_id, **params), f"image {image_id} differs"


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX) or p.name.endswith(".tmp")]


# ---- the happy path and the manifest --------------------------------------------------------


def test_downloads_are_byte_identical_and_recorded(server, tmp_path):
    ids = server.add_images(6)
    report = download_images(ids + ids[:2], tmp_path, api_base=server.api_base, workers=3, **FAST)
    assert report.ok and sorted(report.downloaded) == ids and not report.skipped
    assert_identical(server, tmp_path, ids)
    assert len(server.image_requests()) == 6  # duplicates in the input are fetched once
    manifest = read_manifest(tmp_path)
    assert sorted(manifest) == ids
    entry = manifest[ids[0]]
    body = server.expected_bytes(ids[0])
    assert entry["url"] == f"{server.api_base}/api/v2/image_download/{ids[0]}"
    assert entry["bytes"] == len(body)
    assert entry["sha256"] == __import__("hashlib").sha256(body).hexdigest()
    assert (entry["width"], entry["height"]) == (64, 48)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["images"][str(ids[0])]["id"] == ids[0]
    assert report.paths() == [image_path(tmp_path, i) for i in ids]
    assert temp_files(tmp_path) == []
    assert "6 of 6 images present" in report.summary()


def test_every_fault_kind_is_survived_byte_identically(server, tmp_path):
    ids = server.add_images(9, width=96, height=64)
    server.inject("500", times=2)  # the first two image requests, whichever they are
    server.inject("503", image_id=ids[0], times=2)
    server.inject("429", image_id=ids[1], retry_after="0")
    server.inject("reset", image_id=ids[2])
    server.inject("truncate", image_id=ids[3])
    server.inject("reset_mid", image_id=ids[4])
    server.inject("corrupt", image_id=ids[5])
    server.inject("html", image_id=ids[6])
    server.inject("slow", image_id=ids[7], delay=1.5)  # longer than the 0.5 s read timeout
    server.inject("truncate", image_id=ids[8])
    server.inject("corrupt", image_id=ids[8])
    # retries=4: an image can meet up to four faults (both global 500s plus its own two).
    options = dict(FAST, timeout=(2.0, 0.5), retries=4)
    report = download_images(ids, tmp_path, api_base=server.api_base, workers=4, **options)
    assert report.ok, report.summary()
    assert_identical(server, tmp_path, ids)
    for image_id, faults in zip(ids, (2, 1, 1, 1, 1, 1, 1, 1, 2)):
        assert len(server.image_requests(image_id)) >= faults + 1
    # Each of the 13 injected faults cost exactly one extra request, nothing more.
    assert len(server.image_requests()) == 9 + 13
    assert temp_files(tmp_path) == []


def test_retry_after_is_honoured(server, tmp_path):
    [image_id] = server.add_images(1)
    server.inject("429", image_id=image_id, retry_after="1")
    report = download_images([image_id], tmp_path, api_base=server.api_base, **FAST)
    assert report.ok
    first, second = server.image_requests(image_id)
    assert first.status == 429 and second.status == 200
    assert second.time - first.time >= 0.9  # backoff alone would have been 10 ms


def test_rate_limit_spaces_requests_across_workers(server, tmp_path):
    ids = server.add_images(5)
    started = time.time()
    report = download_images(ids, tmp_path, api_base=server.api_base, workers=5,
                             **dict(FAST, rate=10.0))
    assert report.ok
    # 10/s shared by 5 workers: the j-th request cannot arrive before j * 100 ms.
    times = sorted(record.time for record in server.image_requests())
    assert all(t - started >= j * 0.1 - 0.01 for j, t in enumerate(times))
    assert times[-1] - started >= 0.4 - 0.01


def test_downsample_quality_and_region_are_sent_and_respected(server, tmp_path):
    [image_id] = server.add_images(1, width=128, height=96)
    report = download_images([image_id], tmp_path / "half", api_base=server.api_base,
                             downsample=1, quality=70, **FAST)
    assert report.ok
    assert server.image_requests()[-1].query == {"downsample": "1", "quality": "70"}
    assert_identical(server, tmp_path / "half", [image_id], downsample=1, quality=70)
    assert read_manifest(tmp_path / "half")[image_id]["width"] == 64
    with Image.open(image_path(tmp_path / "half", image_id)) as image:
        assert image.size == (64, 48)
    region = Region(left=32, top=16, width=20, height=10)
    report = download_images([image_id], tmp_path / "region", api_base=server.api_base,
                             downsample=1, region=region, **FAST)
    assert report.ok
    assert server.image_requests()[-1].query == {"downsample": "1", "left": "32", "top": "16",
                                                 "width": "20", "height": "10"}
    with Image.open(image_path(tmp_path / "region", image_id)) as image:
        assert image.size == (20, 10)


# ---- resuming ---------------------------------------------------------------------------------


def test_rerun_skips_verified_files_without_any_request(server, tmp_path):
    ids = server.add_images(4)
    assert download_images(ids, tmp_path, api_base=server.api_base, **FAST).ok
    server.clear_log()
    report = download_images(ids, tmp_path, api_base=server.api_base, **FAST)
    assert report.ok and sorted(report.skipped) == ids and report.downloaded == []
    assert server.requests == []
    assert "4 skipped as already present" in report.summary()


def test_rerun_refetches_corrupt_truncated_unrecorded_and_missing_files(server, tmp_path):
    ids = server.add_images(6)
    assert download_images(ids, tmp_path, api_base=server.api_base, **FAST).ok
    corrupt, truncated, unrecorded, missing, other_params = ids[:5]
    data = bytearray(image_path(tmp_path, corrupt).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    image_path(tmp_path, corrupt).write_bytes(bytes(data))
    full = image_path(tmp_path, truncated).read_bytes()
    image_path(tmp_path, truncated).write_bytes(full[: len(full) // 2])
    image_path(tmp_path, missing).unlink()
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    del manifest["images"][str(unrecorded)]
    manifest["images"][str(other_params)]["params"]["downsample"] = 3
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    server.clear_log()
    report = download_images(ids, tmp_path, api_base=server.api_base, **FAST)
    assert report.ok
    assert sorted(report.downloaded) == \
        sorted([corrupt, truncated, unrecorded, missing, other_params])
    assert report.skipped == [ids[5]]
    assert sorted(r.image_id for r in server.image_requests()) == sorted(report.downloaded)
    assert_identical(server, tmp_path, ids)


def test_an_unreadable_manifest_is_set_aside_and_everything_is_verified_again(server, tmp_path):
    ids = server.add_images(2)
    assert download_images(ids, tmp_path, api_base=server.api_base, **FAST).ok
    (tmp_path / MANIFEST_NAME).write_text("{ not json")
    server.clear_log()
    report = download_images(ids, tmp_path, api_base=server.api_base, **FAST)
    assert report.ok and sorted(report.downloaded) == ids
    assert len(list(tmp_path.glob(f"{MANIFEST_NAME}.unreadable-*"))) == 1
    assert sorted(read_manifest(tmp_path)) == ids


def test_changed_download_parameters_refetch(server, tmp_path):
    [image_id] = server.add_images(1, width=128, height=96)
    assert download_images([image_id], tmp_path, api_base=server.api_base, **FAST).ok
    report = download_images([image_id], tmp_path, api_base=server.api_base, downsample=1, **FAST)
    assert report.downloaded == [image_id]
    assert_identical(server, tmp_path, [image_id], downsample=1)


def test_a_good_image_stays_until_its_replacement_is_verified(server, tmp_path):
    """New settings (or a file without a manifest entry) and a server that fails: the image that
    was there is kept (it was deleted before the request, and the run ended with nothing)."""
    ids = server.add_images(2, width=128, height=96)
    assert download_images(ids, tmp_path, api_base=server.api_base, **FAST).ok
    before = {i: image_path(tmp_path, i).read_bytes() for i in ids}
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    del manifest["images"][str(ids[1])]  # as a folder of <id>.jpg without a manifest
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    server.inject("503", times=None)
    report = download_images(ids, tmp_path, api_base=server.api_base, downsample=1, **dict(FAST, retries=0))
    assert sorted(report.failed) == ids
    assert {i: image_path(tmp_path, i).read_bytes() for i in ids} == before and temp_files(tmp_path) == []
    server.clear_faults()
    assert download_images(ids, tmp_path, api_base=server.api_base, downsample=1, **FAST).ok
    assert_identical(server, tmp_path, ids, downsample=1)


def test_stale_temp_files_from_a_killed_run_are_removed(server, tmp_path):
    ids = server.add_images(1)
    stale = tmp_path / f".{ids[0]}.jpg.0badc0de{TEMP_SUFFIX}"
    stale.write_bytes(b"half an image")
    stale_manifest = tmp_path / f".{MANIFEST_NAME}.0badc0de{TEMP_SUFFIX}"
    stale_manifest.write_text('{"format": ')
    someone_elses = tmp_path / "notes.part"
    someone_elses.write_text("not ours")
    assert download_images(ids, tmp_path, api_base=server.api_base, **FAST).ok
    assert not stale.exists() and not stale_manifest.exists()
    assert someone_elses.exists()


def test_a_second_run_on_the_same_folder_is_refused_while_one_is_active(server, tmp_path):
    ids = server.add_images(1)
    with directory_lock(tmp_path):
        with pytest.raises(DirectoryBusyError, match=str(tmp_path)):
            download_images(ids, tmp_path, api_base=server.api_base, **FAST)
    assert download_images(ids, tmp_path, api_base=server.api_base, **FAST).ok


# ---- no partial file under a final name --------------------------------------------------------


def test_no_partial_file_is_ever_visible_under_a_final_name(tmp_path):
    with AllenStandIn(bandwidth=400_000) as server:
        ids = server.add_images(8, width=200, height=150)
        for image_id in ids[::2]:
            server.inject("truncate", image_id=image_id)
        server.inject("reset_mid", image_id=ids[1])
        expected = {image_id: server.expected_bytes(image_id) for image_id in ids}
        seen_partial: list[str] = []
        seen_final: set[int] = set()
        done = threading.Event()

        def watch() -> None:
            while True:
                finished = done.is_set()  # one more look after the download has returned
                for path in tmp_path.glob("*.jpg"):
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue
                    seen_final.add(int(path.stem))
                    if data != expected[int(path.stem)]:
                        seen_partial.append(f"{path.name}: {len(data)} bytes")
                if finished:
                    return

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            report = download_images(ids, tmp_path, api_base=server.api_base, workers=3, **FAST)
        finally:
            done.set()
            watcher.join()
    assert report.ok
    assert seen_partial == []
    assert seen_final == set(ids)  # the watcher really saw the files appear
    assert temp_files(tmp_path) == []


def test_killed_download_resumes_without_refetching_finished_images(tmp_path):
    # Slow bodies (a simulated 60 kB/s link) keep downloads in flight when the process dies.
    with AllenStandIn(bandwidth=60_000) as server:
        ids = server.add_images(12, width=200, height=150)
        args = ["--tmp_dir", str(tmp_path), "--image_ids", ",".join(map(str, ids)),
                "--api_base", server.api_base, "--workers", "2", *FAST_CLI]
        env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        process = subprocess.Popen([sys.executable, "-m", "allen_sr.commands.download", *args], cwd=REPO,
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        try:
            while True:
                assert process.poll() is None, "finished before it could be killed: " + \
                    process.stderr.read().decode()
                in_flight = [p for p in tmp_path.glob(f"*{TEMP_SUFFIX}")]
                if len(read_manifest(tmp_path)) >= 3 and in_flight:
                    break
                assert time.monotonic() < deadline, "the download made no progress"
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
            process.stderr.close()
        assert process.returncode == -signal.SIGKILL
        finished = set(read_manifest(tmp_path))
        assert 3 <= len(finished) < len(ids)
        for path in tmp_path.glob("*.jpg"):  # whatever is under a final name is complete
            assert path.read_bytes() == server.expected_bytes(int(path.stem))
        requests_before = len(server.requests)

        server.bandwidth = None
        assert download_main(args) == 0
        later = {r.image_id for r in server.requests[requests_before:] if r.kind == "image"}
        assert later.isdisjoint(finished)
        assert later == set(ids) - finished
        assert_identical(server, tmp_path, ids)
        assert temp_files(tmp_path) == []


# ---- specific errors ----------------------------------------------------------------------------


def test_unknown_id_is_a_404_message_and_others_still_download(server, tmp_path):
    ids = server.add_images(3)
    report = download_images([ids[0], 123, *ids[1:]], tmp_path, api_base=server.api_base, **FAST)
    assert not report.ok
    assert report.failed == {123: f"image 123 not found on {server.api_base} (404): check the id"}
    assert sorted(report.downloaded) == ids and report.missing == [123]
    assert len(server.image_requests(123)) == 1  # a 404 is not retried
    assert not image_path(tmp_path, 123).exists()
    assert f"failed: image 123 not found on {server.api_base} (404)" in report.summary()


def test_html_answer_is_named_as_such(server, tmp_path):
    [image_id] = server.add_images(1, first_id=4242)
    server.inject("html", image_id=image_id, times=None)
    report = download_images([image_id], tmp_path, api_base=server.api_base, **FAST)
    message = report.failed[image_id]
    assert message.startswith("image 4242: ")
    assert "answered 200 with an HTML page" in message and "text/html" in message
    assert "maintenance" in message  # a glimpse of what the page said
    assert not image_path(tmp_path, image_id).exists() and temp_files(tmp_path) == []


def test_a_server_that_keeps_failing_gives_up_after_n_attempts(server, tmp_path):
    ids = server.add_images(2, first_id=777)
    server.inject("500", image_id=ids[0], times=None)
    report = download_images(ids, tmp_path, api_base=server.api_base, **dict(FAST, retries=2))
    assert report.downloaded == [ids[1]]
    assert report.failed[ids[0]] == (
        f"image 777: gave up after 3 attempts: HTTP 500 Internal Server Error from "
        f"{server.api_base}/api/v2/image_download/777")
    assert len(server.image_requests(ids[0])) == 3


def test_truncation_that_never_heals_says_so(server, tmp_path):
    [image_id] = server.add_images(1, first_id=31)
    server.inject("truncate", image_id=image_id, times=None)
    report = download_images([image_id], tmp_path, api_base=server.api_base, **FAST)
    assert report.failed[image_id].startswith("image 31: gave up after 4 attempts: ")
    assert "connection lost" in report.failed[image_id]
    assert not image_path(tmp_path, image_id).exists() and temp_files(tmp_path) == []


def test_disk_full_says_so_and_tells_what_to_do(server, tmp_path, monkeypatch):
    ids = server.add_images(3, first_id=50)
    real_create = download.create_temp_file
    monkeypatch.setattr(download, "create_temp_file", lambda path: FullDisk(real_create(path)))
    report = download_images(ids, tmp_path, api_base=server.api_base, workers=1, **FAST)
    assert not report.ok and report.downloaded == []
    first = report.failed[50]
    assert first.startswith("image 50: no space left on the device holding ")
    assert str(tmp_path) in first
    assert "free some disk space or choose another --tmp_dir" in first
    # The run stops instead of filling the disk again for every other image.
    assert report.failed[51] == "image 51: not downloaded: stopped after a full disk (image 50)"
    assert len(server.image_requests()) == 1
    assert list(tmp_path.glob("*.jpg")) == [] and temp_files(tmp_path) == []


def test_verify_image_file_rejects_tiny_html_and_truncated_files(tmp_path, server):
    tiny = tmp_path / "tiny.jpg"
    tiny.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(CorruptImageError, match="only 3 bytes"):
        verify_image_file(tiny)
    page = tmp_path / "page.jpg"
    page.write_bytes(b"<html><body>" + b"x" * 500 + b"</body></html>")
    with pytest.raises(NotAnImageError, match="an HTML page"):
        verify_image_file(page)
    [image_id] = server.add_images(1)
    body = server.expected_bytes(image_id)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(body[: len(body) * 2 // 3])
    with pytest.raises(CorruptImageError, match="incomplete or corrupt"):
        verify_image_file(cut)
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(body)
    assert verify_image_file(whole).bytes == len(body)


def test_reduced_scale_verification_of_big_images_still_catches_truncation(
        tmp_path, server, monkeypatch):
    # Big images are decoded at 1/8 scale to save memory; pretend this one is big.
    monkeypatch.setattr(manifest, "DRAFT_DECODE_ABOVE_PIXELS", 1000)
    [image_id] = server.add_images(1, width=256, height=192)
    body = server.expected_bytes(image_id)
    whole, cut = tmp_path / "whole.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(body)
    cut.write_bytes(body[: len(body) - 200])
    assert (verify_image_file(whole).width, verify_image_file(whole).height) == (256, 192)
    with pytest.raises(CorruptImageError, match="incomplete or corrupt"):
        verify_image_file(cut)


PILLOW_DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # PIL.Image.MAX_IMAGE_PIXELS as shipped
BIG_IMAGE_SCRIPT = """
import sys, warnings
from PIL import Image
default = Image.MAX_IMAGE_PIXELS
# Above Pillow's default limit a decode warns of a "decompression bomb": make that an error.
warnings.simplefilter("error", Image.DecompressionBombWarning)
from allen_sr.data import datagen, images, tiles
from allen_sr.data.download import download_images
from allen_sr.data.manifest import image_path
assert Image.MAX_IMAGE_PIXELS == default, "importing the data side changed Pillow's limit"
image_id, api_base, tmp_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
report = download_images([image_id], tmp_dir, api_base=api_base, rate=None, retries=0)
assert report.ok, report.summary()
path = str(image_path(tmp_dir, image_id))
# Each reader must set the limit itself: start each from Pillow's default again.
Image.MAX_IMAGE_PIXELS = default
assert images.image_size(path) == (10_000, 9_000)  # datagen sizes its shards from headers
Image.MAX_IMAGE_PIXELS = default
kept, _, rejected = tiles.tissue_tiles(images.load_image(path))
print(len(kept), rejected)
"""


def test_an_image_above_pillows_default_limit_is_downloaded_and_tiled(server, tmp_path):
    """A 90 MP section (full-resolution Allen sections are ~130 MP; Pillow's default limit is
    ~89 MP) goes through download verification and tiling in a fresh process that imports only
    the data side: no reader may rely on an import or another reader having raised the limit."""
    width, height = 10_000, 9_000
    assert width * height > PILLOW_DEFAULT_MAX_PIXELS
    picture = Image.new("L", (width, height), 245)  # glass (a grey JPEG: Pillow decodes it) ...
    picture.paste(60, (640, 640, 1280, 1280))  # ... with 10 x 10 tiles of dark stain
    image_id = server.add_picture(4711, picture)
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    proc = subprocess.run([sys.executable, "-c", BIG_IMAGE_SCRIPT, str(image_id), server.api_base,
                           str(tmp_path / "raw")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept, rejected = map(int, proc.stdout.split())
    assert kept == 100 and kept + rejected == (width // 64) * (height // 64)
    assert image_path(tmp_path / "raw", image_id).read_bytes() == server.expected_bytes(image_id)


@pytest.fixture(scope="module")
def self_signed_certificate(tmp_path_factory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


def test_https_certificates_are_verified(self_signed_certificate, tmp_path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with AllenStandIn(tls=self_signed_certificate) as server:
        ids = server.add_images(1, first_id=88)
        report = download_images(ids, tmp_path / "untrusted", api_base=server.api_base, **FAST)
        assert report.failed[88].startswith(
            f"image 88: TLS certificate verification failed for {server.api_base}/api/v2/")
        assert "REQUESTS_CA_BUNDLE" in report.failed[88]
        assert server.requests == [] and server.connections == 1  # refused once, not retried
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", self_signed_certificate[0])
        report = download_images(ids, tmp_path / "trusted", api_base=server.api_base, **FAST)
        assert report.ok
        assert_identical(server, tmp_path / "trusted", ids)


# ---- command line -------------------------------------------------------------------------------


def test_cli_downloads_ids_and_ids_file_and_prints_a_summary(server, tmp_path, capsys):
    ids = server.add_images(4)
    id_file = tmp_path / "ids.txt"
    id_file.write_text(f"# two ids\n{ids[2]}\n{ids[3]}, {ids[2]}\n\n", encoding="utf-8-sig")  # as Notepad saves
    common = ["--api_base", server.api_base, *FAST_CLI]
    assert download_main(["--tmp_dir", str(tmp_path / "a"),
                          "--image_ids", f"{ids[0]},{ids[1]}", *common]) == 0
    assert download_main(["--tmp_dir", str(tmp_path / "a"), "--image_ids_file", str(id_file),
                          *common]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 images present" in out and "2 downloaded" in out
    assert_identical(server, tmp_path / "a", ids)


def test_cli_returns_nonzero_and_names_the_missing_image(server, tmp_path, capsys):
    ids = server.add_images(1)
    code = download_main(["--tmp_dir", str(tmp_path), "--image_ids", f"{ids[0]},999",
                          "--api_base", server.api_base, *FAST_CLI])
    out = capsys.readouterr().out
    assert code == 1
    assert f"image 999 not found on {server.api_base} (404): check the id" in out
    assert "1 of 2 images present" in out


def test_cli_lists_by_data_set_ids_and_filters(server, tmp_path, capsys):
    first = server.add_data_set(1, plane="coronal", image_count=3)
    second = server.add_data_set(2, plane="sagittal", image_count=2)
    server.add_data_set(3, plane="coronal", failed=True, image_count=2)
    common = ["--api_base", server.api_base, *FAST_CLI]
    assert download_main(["--tmp_dir", str(tmp_path / "ds"), "--data_set_ids", "2,1", *common]) == 0
    assert_identical(server, tmp_path / "ds", second + first)
    capsys.readouterr()
    assert download_main(["--tmp_dir", str(tmp_path / "f"), "--plane", "coronal", "--list_only",
                          *common]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in first]
    assert download_main(["--tmp_dir", str(tmp_path / "f"), "--product", "Mouse",
                          "--max_images", "2", *common]) == 0
    assert sorted(int(p.stem) for p in (tmp_path / "f").glob("*.jpg")) == first[:2]


def test_cli_usage_errors(tmp_path, capsys):
    (tmp_path / "comments.txt").write_text("# nothing yet\n\n")
    assert download_main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: allen-sr download")
    for argv, expected in (
        (["--image_ids", "1,2x"], "'2x' is not a numeric id"),
        (["--image_ids", "1", "--plane", "coronal"], "do not combine"),
        (["--image_ids", "1", "--data_set_ids", "2"], "not allowed with"),
        (["--quality", "101"], "--quality must be within 0-100"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--timeout", "nan"], "--timeout must be a number of seconds > 0"),
        (["--connect_timeout", "0"], "--connect_timeout must be"),
        (["--rate", "nan"], "--rate and --backoff must be numbers >= 0"),
        (["--width", "10"], "--width and --height"),
        (["--image_ids_file", str(tmp_path / "nope.txt")], "cannot read"),
        # an empty selection meant the 100 stock images; ',' or an ids file of comments meant none
        (["--image_ids", ""], "--image_ids is empty"),
        (["--data_set_ids", " "], "--data_set_ids is empty"),
        (["--image_ids", ","], "holds no image ids"),
        (["--image_ids_file", str(tmp_path / "comments.txt")], "holds no image ids"),
    ):
        assert download_main(["--tmp_dir", str(tmp_path), *argv]) == 2, argv
        assert expected in capsys.readouterr().err, argv


def test_default_selection_is_the_stock_ids(capsys, tmp_path):
    assert download_main(["--tmp_dir", str(tmp_path), "--list_only"]) == 0
    listed = [int(line) for line in capsys.readouterr().out.split()]
    assert len(listed) == 100 and listed == list(STOCK_IMAGE_IDS)  # checked against t2t's list


def test_stand_in_runs_as_a_standalone_process(tmp_path):
    process = subprocess.Popen([sys.executable, str(STAND_IN), "--port", "0", "--images", "2"],
                               stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(process.stdout.readline())
        report = download_images(info["image_ids"], tmp_path, api_base=info["api_base"], **FAST)
        assert report.ok
        log = requests.get(f"{info['api_base']}/_stand_in/requests", timeout=5).json()
        assert sorted(r["image_id"] for r in log if r["kind"] == "image") == info["image_ids"]
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
    assert process.returncode == 0


@pytest.mark.parametrize("row", [{"foo": 1}, {"id": None}, "abc", {"id": 12.7}])
def test_cli_names_a_malformed_listing_row(server, tmp_path, capsys, row):
    """A listing row without a usable id (no id, null, a string row, a fraction) is one line naming the row and the
    query URL, by data set ids and by filters alike; no traceback."""
    server.add_data_set(55, image_count=2)
    common = ["--tmp_dir", str(tmp_path), "--api_base", server.api_base, *FAST_CLI]
    server.raw_rows["SectionImage"] = [{"id": 55000}, row]
    assert download_main(["--data_set_ids", "55", *common]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("allen-sr download: error: listing images failed: RMA query row 1 has no numeric id: ")
    assert f"(from {server.api_base}/api/v2/data/query.json?criteria=model::SectionImage" in error
    assert len(error.splitlines()) == 1
    server.raw_rows = {"SectionDataSet": [row]}
    assert download_main(["--plane", "coronal", *common]) == 1
    assert "RMA query row 0 has no numeric id: " in capsys.readouterr().err


def test_ctrl_c_while_listing_is_one_line(server, tmp_path):
    """Ctrl-C while the image ids are listed ends with one line and code 130, as during the download."""
    server.add_data_set(55, image_count=2)
    server.inject("slow", target="query", delay=30)
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    process = subprocess.Popen([sys.executable, "-m", "allen_sr.commands.download", "--tmp_dir", str(tmp_path),
                                "--data_set_ids", "55", "--api_base", server.api_base, "--timeout", "60"],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               # a user's Ctrl-C, whatever the test runner's: its workers may ignore SIGINT, and a
                               # Python started with SIGINT ignored keeps ignoring it
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not server.query_requests():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=20)
    assert process.returncode == 130
    assert error.strip() == "allen-sr download: interrupted while listing the images; nothing was downloaded"


def test_stand_in_refuses_an_absurd_downsample_at_once(server):
    """The stand-in answers downsample=100000000000 with a 400 instead of computing 2**1e11 (minutes, gigabytes)."""
    image_id = server.add_image(7)
    started = time.monotonic()
    answer = requests.get(f"{server.api_base}/api/v2/image_download/{image_id}?downsample=100000000000", timeout=10)
    assert answer.status_code == 400 and time.monotonic() - started < 5


def test_downsample_0_keeps_what_was_downloaded_without_it(server, tmp_path):
    """--downsample 0 halves nothing: the images fetched without it are skipped, not downloaded again."""
    ids = server.add_images(3)
    common = ["--tmp_dir", str(tmp_path), "--image_ids", ",".join(map(str, ids)), "--api_base", server.api_base,
              *FAST_CLI]
    assert download_main(common) == 0
    server.clear_log()
    assert download_main([*common, "--downsample", "0"]) == 0
    assert server.image_requests() == []


def test_a_folder_under_an_image_name_is_named(server, tmp_path, capsys):
    """A folder named <id>.jpg in --tmp_dir fails that image in one line saying what to do (no traceback logged);
    the others download."""
    ids = server.add_images(2)
    (tmp_path / f"{ids[0]}.jpg").mkdir()
    assert download_main(["--tmp_dir", str(tmp_path), "--image_ids", ",".join(map(str, ids)),
                          "--api_base", server.api_base, *FAST_CLI]) == 1
    captured = capsys.readouterr()
    assert f"  failed: image {ids[0]}: {tmp_path / f'{ids[0]}.jpg'} is a folder, not an image: move or rename it" \
        in captured.out
    assert "Traceback" not in captured.err and "1 of 2 images present" in captured.out


def test_the_progress_bar_counts_the_image_it_has_just_finished(server, tmp_path, capsys):
    """Each time the bar is drawn its counts (new, kept, failed) add up to the images done, not one fewer."""
    ids = server.add_images(4, first_id=60)
    download_images(ids[:1], tmp_path, api_base=server.api_base, **FAST)
    server.latency = 0.15  # longer than the bar's 0.1 s between redraws: it is drawn after every image
    download_images(ids, tmp_path, api_base=server.api_base, workers=1, progress=True, **FAST)
    drawn = re.findall(r"(\d)/4 \[[^\]]*failed=(\d), kept=(\d), new=(\d)\]", capsys.readouterr().err)
    assert len(drawn) >= 3, drawn
    assert all(int(done) == int(new) + int(kept) + int(failed) for done, failed, kept, new in drawn), drawn


def test_without_a_terminal_the_download_logs_its_counts_now_and_then(server, tmp_path, monkeypatch, caplog):
    """No progress bar and stderr not a terminal (a log file, a pipe): a line of counts at most every
    PROGRESS_LOG_SECONDS (here 0: after each image), so the download is seen to move before its summary."""
    ids = server.add_images(3, first_id=70)
    monkeypatch.setattr(download, "PROGRESS_LOG_SECONDS", 0.0)
    with caplog.at_level("INFO", logger="allen_sr"):
        download_images(ids, tmp_path, api_base=server.api_base, workers=1, **FAST)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("allen-sr download: ")]
    assert lines == [f"allen-sr download: {k} of 3 images done ({k} new, 0 kept, 0 failed)" for k in (1, 2, 3)]
