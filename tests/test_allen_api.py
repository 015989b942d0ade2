"""The Allen API side: URL and RMA building, listing with paging, retries, rate limit.

Covers allen_sr.data.allen_urls, allen_sr.data.retry and allen_sr.data.allen_api. Every request
goes to the stand-in server on 127.0.0.1 (tests/allen_stand_in.py), never to the real Allen API.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import shared_path  # noqa: E402

from allen_sr.data import allen_api  # noqa: E402
from allen_sr.data.allen_api import AllenClient  # noqa: E402
from allen_sr.data.allen_urls import (  # noqa: E402
    STOCK_IMAGE_IDS,
    Region,
    image_download_url,
    rma_query_url,
    section_data_set_criteria,
    section_image_criteria,
)
from allen_sr.data.errors import Cancelled, GaveUpError, RmaQueryError  # noqa: E402
from allen_sr.data.retry import RateLimiter, RetryPolicy, parse_retry_after  # noqa: E402

FAST = dict(timeout=(2.0, 2.0), retry=RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05),
            rate=None)


# ---- pure functions --------------------------------------------------------------------------


def test_image_download_url_has_documented_shape_and_parameters():
    assert image_download_url("https://allen.invalid/", 42) == \
        "https://allen.invalid/api/v2/image_download/42"
    url = image_download_url("https://allen.invalid", 42, downsample=2, quality=80,
                             region=Region(left=100, top=200, width=30, height=40))
    assert url == ("https://allen.invalid/api/v2/image_download/42"
                   "?downsample=2&quality=80&left=100&top=200&width=30&height=40")
    with pytest.raises(ValueError, match="quality"):
        image_download_url("https://x", 1, quality=101)
    with pytest.raises(ValueError, match="width/height"):
        Region(0, 0, 0, 10)


def test_criteria_match_the_documented_rma_shapes():
    assert section_image_criteria(100960033) == \
        "model::SectionImage,rma::criteria,[data_set_id$eq100960033]"
    assert section_data_set_criteria("Mouse", "coronal") == (
        "model::SectionDataSet,rma::criteria,[failed$eq'false'],products[abbreviation$eq'Mouse'],"
        "plane_of_section[name$eq'coronal']")
    assert section_data_set_criteria(None, None, None) == "model::SectionDataSet,rma::criteria"
    with pytest.raises(ValueError, match="quote"):
        section_data_set_criteria("Mo'use")


def test_rma_query_url_pages_and_keeps_rma_punctuation_literal():
    url = rma_query_url("https://allen.invalid", section_image_criteria(7), start_row=50,
                        num_rows=25, order="sub_images.section_number")
    assert url == ("https://allen.invalid/api/v2/data/query.json?criteria=model::SectionImage,"
                   "rma::criteria,[data_set_id$eq7],rma::options[start_row$eq50][num_rows$eq25]"
                   "[order$eq'sub_images.section_number']")
    assert "%20" in rma_query_url("https://x", section_data_set_criteria("Mouse", "a b"))


def _tensor2tensor_image_ids() -> list[int]:
    """`_IMAGE_IDS` as written in the installed tensor2tensor's allen_brain.py (read, not imported)."""
    package = importlib.util.find_spec("tensor2tensor")
    source = Path(package.submodule_search_locations[0], "data_generators", "allen_brain.py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["_IMAGE_IDS"]:
            return [int(value) for value in ast.literal_eval(node.value)]
    raise AssertionError(f"no _IMAGE_IDS list in {source}")


def test_stock_image_ids_are_tensor2tensors_list():
    """Our embedded copy is the stock problem's list, in its order (its files are <index>.jpg)."""
    assert len(STOCK_IMAGE_IDS) == 100 and len(set(STOCK_IMAGE_IDS)) == 100
    assert list(STOCK_IMAGE_IDS) == _tensor2tensor_image_ids()


def test_stock_image_ids_match_the_shared_reference_list():
    reference = shared_path("reference", "stock_image_ids.txt")
    assert list(STOCK_IMAGE_IDS) == [int(line) for line in reference.read_text().split()]


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    now = time.time()
    assert 9 <= parse_retry_after(formatdate(now + 10, usegmt=True), now=now) <= 10.5
    assert parse_retry_after(formatdate(now - 100, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_policy_backs_off_exponentially_with_jitter_and_honours_retry_after():
    policy = RetryPolicy(attempts=5, backoff=1.0, max_backoff=5.0)
    for failed, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
        delays = [policy.delay(failed) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert policy.delay(1, retry_after=30) == 30
    assert RetryPolicy(max_retry_after=10).delay(1, retry_after=3600) == 10


def test_rate_limiter_is_shared_across_threads():
    limiter = RateLimiter(20.0)  # one request per 50 ms, whatever the number of threads
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(3):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every acquire gets its own 50 ms slot, so the j-th request cannot happen before j slots
    # have passed, however the 4 threads interleave (a late wake-up only makes it later).
    stamps.sort()
    assert all(stamp - started >= j * 0.05 - 0.005 for j, stamp in enumerate(stamps))
    unlimited = RateLimiter(None)
    started = time.monotonic()
    for _ in range(1000):
        unlimited.acquire()
    assert time.monotonic() - started < 0.5


def test_rate_limiter_wait_is_cancelled_by_stop_event():
    limiter = RateLimiter(0.5)
    stop = threading.Event()
    limiter.acquire(stop)
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        limiter.acquire(stop)
    assert time.monotonic() - started < 1.0


# ---- listing against the stand-in ------------------------------------------------------------


def test_list_section_images_by_data_set_ids(server):
    first = server.add_data_set(11, image_count=3)
    second = server.add_data_set(22, image_count=2)
    server.add_data_set(33, image_count=4)  # not asked for
    with AllenClient(server.api_base, **FAST) as client:
        rows = client.list_section_images([22, 11])
    assert [row["id"] for row in rows] == second + first
    assert {row["data_set_id"] for row in rows} == {11, 22}
    criteria = [record.query["criteria"] for record in server.query_requests()]
    assert criteria[0].startswith("model::SectionImage,rma::criteria,[data_set_id$eq22],")
    assert criteria[1].startswith("model::SectionImage,rma::criteria,[data_set_id$eq11],")


def test_listing_pages_through_all_rows(server):
    ids = server.add_data_set(5, image_count=23)
    with AllenClient(server.api_base, **FAST) as client:
        rows = client.rma_query(section_image_criteria(5), page_size=5)
    assert [row["id"] for row in rows] == ids
    pages = server.query_requests()
    assert [(p.start_row, p.num_rows) for p in pages] == \
        [(0, "5"), (5, "5"), (10, "5"), (15, "5"), (20, "5")]


def test_listing_with_a_limit_stops_early(server):
    server.add_data_set(5, image_count=23)
    with AllenClient(server.api_base, **FAST) as client:
        rows = client.rma_query(section_image_criteria(5), page_size=5, limit=7)
    assert len(rows) == 7
    assert [(p.start_row, p.num_rows) for p in server.query_requests()] == [(0, "5"), (5, "2")]


def test_list_by_filters_then_their_images(server):
    coronal = server.add_data_set(1, product="Mouse", plane="coronal", image_count=2)
    server.add_data_set(2, product="Mouse", plane="sagittal", image_count=2)
    server.add_data_set(3, product="Mouse", plane="coronal", failed=True, image_count=2)
    server.add_data_set(4, product="DevMouse", plane="coronal", image_count=2)
    coronal_too = server.add_data_set(5, product="Mouse", plane="coronal", image_count=3)
    with AllenClient(server.api_base, **FAST) as client:
        data_sets = client.list_section_data_sets(product="Mouse", plane="coronal", page_size=1)
        ids = client.list_image_ids_by_filter(product="Mouse", plane="coronal", page_size=2)
        capped = client.list_image_ids_by_filter(product="Mouse", plane="coronal",
                                                 max_data_sets=1)
        few = client.list_image_ids_by_filter(product="Mouse", plane="coronal", max_images=3)
    assert [d["id"] for d in data_sets] == [1, 5]
    assert ids == coronal + coronal_too
    assert capped == coronal
    assert few == (coronal + coronal_too)[:3]
    first = server.query_requests()[0].query["criteria"]
    assert first.startswith("model::SectionDataSet,rma::criteria,[failed$eq'false'],"
                            "products[abbreviation$eq'Mouse'],plane_of_section[name$eq'coronal']")


def test_success_false_raises_with_the_servers_message(server):
    server.inject("rma_error", target="query", message="Data Access error: bad criteria")
    with AllenClient(server.api_base, **FAST) as client:
        with pytest.raises(RmaQueryError) as caught:
            client.list_section_images([77])
    text = str(caught.value)
    assert "Data Access error: bad criteria" in text
    assert server.api_base in text and "data_set_id$eq77" in text


def test_listing_retries_transient_failures(server):
    ids = server.add_data_set(9, image_count=3)
    server.inject("503", target="query", times=1)
    server.inject("reset", target="query", times=1)
    with AllenClient(server.api_base, **FAST) as client:
        rows = client.list_section_images([9])
    assert [row["id"] for row in rows] == ids
    assert len(server.query_requests()) == 3


def test_listing_gives_up_on_a_server_that_keeps_failing(server):
    server.inject("500", target="query", times=None)
    with AllenClient(server.api_base, **FAST) as client:
        with pytest.raises(GaveUpError, match=r"gave up after 3 attempts: HTTP 500") as caught:
            client.list_section_images([9])
    assert "data_set_id$eq9" in str(caught.value)
    assert len(server.query_requests()) == 3


def test_listing_that_is_not_json_is_named(server):
    server.inject("html", target="query")
    with AllenClient(server.api_base, **FAST) as client:
        with pytest.raises(RmaQueryError, match="did not answer JSON.*text/html"):
            client.list_section_images([9])


def test_module_level_helpers_use_a_client(server):
    ids = server.add_data_set(3, image_count=2)
    assert [r["id"] for r in allen_api.list_section_images([3], api_base=server.api_base,
                                                           rate=None)] == ids
    assert allen_api.list_image_ids_by_filter(plane="coronal", api_base=server.api_base,
                                              rate=None) == ids
