"""Talking to the Allen Brain Atlas API: RMA listing queries, image URLs, and polite HTTP.

The Allen API (https://api.brain-map.org) answers RMA queries such as::

    /api/v2/data/query.json?criteria=model::SectionImage,rma::criteria,[data_set_id$eq<ID>]

with ``{"success": true, "start_row": 0, "num_rows": N, "total_rows": T, "msg": [...]}``, and
serves section images through ``/api/v2/image_download/<SectionImage id>``.

This module owns everything about *how* we talk to it, so the downloader (``allen_sr.download``)
and any other caller share one behaviour: one ``requests.Session``, connect/read timeouts,
retries with exponential backoff and jitter on connection errors, 5xx and 429 (honouring
``Retry-After``), and one rate limiter shared by every thread. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar
from urllib.parse import quote, urlencode

import requests
from requests.adapters import HTTPAdapter

__all__ = [
    "DEFAULT_API_BASE",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RATE",
    "DEFAULT_RETRIES",
    "DEFAULT_BACKOFF",
    "STOCK_IMAGE_IDS",
    "AllenApiError",
    "RmaQueryError",
    "TransientError",
    "GaveUpError",
    "Cancelled",
    "Region",
    "RateLimiter",
    "RetryPolicy",
    "AllenClient",
    "image_download_url",
    "section_image_criteria",
    "section_data_set_criteria",
    "rma_query_url",
    "parse_retry_after",
    "retry_call",
    "list_section_images",
    "list_section_data_sets",
    "list_image_ids_by_filter",
]

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.brain-map.org"
DEFAULT_CONNECT_TIMEOUT = 10.0
# Between two received bytes, not for the whole body: the server renders downsampled images on
# the fly and can pause for a while before the first byte of a large one.
DEFAULT_READ_TIMEOUT = 60.0
# No rate limit is documented; a few requests per second keeps us a polite, small client.
DEFAULT_RATE = 4.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 1.0
DEFAULT_MAX_BACKOFF = 60.0
# Allen's own default page size is 50; bigger pages mean fewer round trips for large listings.
DEFAULT_PAGE_SIZE = 2000

# The 100 SectionImage ids hard-coded in tensor2tensor's allen_brain.py (a random subset of
# non-failed "Mouse" product images). Embedded rather than shipped as a data file so that an
# editable or a wheel install finds them without package_data plumbing.
STOCK_IMAGE_IDS: tuple[int, ...] = (
    74887117, 71894997, 69443979, 79853548, 101371232, 77857182, 70446772, 68994990, 69141561,
    70942310, 70942316, 68298378, 69690156, 74364867, 77874134, 75925043, 73854431, 69206601,
    71771457, 101311379, 74777533, 70960269, 71604493, 102216720, 74776437, 75488723, 79815814,
    77857132, 77857138, 74952778, 69068486, 648167, 75703410, 74486118, 77857098, 637407,
    67849516, 69785503, 71547630, 69068504, 69184074, 74853078, 74890694, 74890698, 75488687,
    71138602, 71652378, 68079764, 70619061, 68280153, 73527042, 69764608, 68399025, 244297,
    69902658, 68234159, 71495521, 74488395, 73923026, 68280155, 75488747, 69589140, 71342189,
    75119214, 79455452, 71774294, 74364957, 68031779, 71389422, 67937572, 69912671, 73854471,
    75008183, 101371376, 75703290, 69533924, 79853544, 77343882, 74887133, 332587, 69758622,
    69618413, 77929999, 244293, 334792, 75825136, 75008103, 70196678, 71883965, 74486130,
    74693566, 76107119, 76043858, 70252433, 68928364, 74806345, 67848661, 75900326, 71773690,
    75008171,
)

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Errors


class AllenApiError(RuntimeError):
    """Something went wrong talking to the Allen API; the message says what and for which input."""


class RmaQueryError(AllenApiError):
    """An RMA query answered ``success: false`` (or something that is not an RMA answer)."""


class TransientError(AllenApiError):
    """A failure worth retrying (connection error, 5xx, 429, a truncated body, ...).

    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GaveUpError(AllenApiError):
    """Every attempt failed with a :class:`TransientError`; ``last_error`` is the final one."""

    def __init__(self, attempts: int, last_error: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last_error}")
        self.attempts = attempts
        self.last_error = last_error


class Cancelled(AllenApiError):
    """The caller asked everything to stop (Ctrl-C, disk full) while we were waiting."""


# --------------------------------------------------------------------------------------------
# URLs and RMA criteria


@dataclass(frozen=True)
class Region:
    """A rectangle of a section image, in the API's convention.

    ``left``/``top`` are full-resolution pixel coordinates; ``width``/``height`` are pixels of the
    downsampled level that is asked for (FACTS.md section 3).
    """

    left: int
    top: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.left < 0 or self.top < 0:
            raise ValueError(f"region left/top must be >= 0, got {self.left}, {self.top}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"region width/height must be > 0, got {self.width}x{self.height}")


def image_download_url(
    api_base: str,
    image_id: int,
    *,
    downsample: int | None = None,
    quality: int | None = None,
    region: Region | None = None,
) -> str:
    """Return the ``/api/v2/image_download/<id>`` URL for one section image.

    ``downsample=N`` halves width and height N times; ``quality`` is the JPEG quality 0-100;
    ``region`` asks for a rectangle instead of the whole section.
    """
    if downsample is not None and downsample < 0:
        raise ValueError(f"downsample must be >= 0, got {downsample}")
    if quality is not None and not 0 <= quality <= 100:
        raise ValueError(f"quality must be within 0-100, got {quality}")
    params: list[tuple[str, int]] = []
    if downsample is not None:
        params.append(("downsample", downsample))
    if quality is not None:
        params.append(("quality", quality))
    if region is not None:
        params += [("left", region.left), ("top", region.top),
                   ("width", region.width), ("height", region.height)]
    url = f"{api_base.rstrip('/')}/api/v2/image_download/{int(image_id)}"
    return f"{url}?{urlencode(params)}" if params else url


def _rma_literal(value: str) -> str:
    if "'" in value:
        # RMA has no escape for a quote inside a quoted literal; refuse rather than send a query
        # that means something else.
        raise ValueError(f"an RMA value cannot contain a single quote: {value!r}")
    return f"'{value}'"


def section_image_criteria(data_set_id: int) -> str:
    """RMA criteria listing the SectionImages of one SectionDataSet."""
    return f"model::SectionImage,rma::criteria,[data_set_id$eq{int(data_set_id)}]"


def section_data_set_criteria(
    product: str | None = "Mouse", plane: str | None = None, failed: bool | None = False
) -> str:
    """RMA criteria listing SectionDataSets by product abbreviation, plane of section and status.

    ``None`` leaves a filter out, e.g. ``failed=None`` lists failed and good data sets alike.
    """
    parts = ["model::SectionDataSet", "rma::criteria"]
    if failed is not None:
        parts.append(f"[failed$eq{_rma_literal(str(bool(failed)).lower())}]")
    if product is not None:
        parts.append(f"products[abbreviation$eq{_rma_literal(product)}]")
    if plane is not None:
        parts.append(f"plane_of_section[name$eq{_rma_literal(plane)}]")
    return ",".join(parts)


# Without an order, paged RMA answers are not guaranteed to be stable between pages.
_DEFAULT_ORDER = {
    "SectionImage": "sub_images.section_number",
    "SectionDataSet": "data_sets.id",
}


def rma_query_url(
    api_base: str,
    criteria: str,
    *,
    start_row: int = 0,
    num_rows: int | str = DEFAULT_PAGE_SIZE,
    order: str | None = None,
) -> str:
    """Return the ``query.json`` URL for ``criteria`` plus paging (and ordering) options."""
    options = f"rma::options[start_row$eq{int(start_row)}][num_rows$eq{num_rows}]"
    if order:
        options += f"[order$eq{_rma_literal(order)}]"
    # RMA's own punctuation stays literal, as in the Allen documentation; anything else (spaces
    # in a plane or product name) is percent-encoded.
    encoded = quote(f"{criteria},{options}", safe="$,[]':()=!*._-")
    return f"{api_base.rstrip('/')}/api/v2/data/query.json?criteria={encoded}"


# --------------------------------------------------------------------------------------------
# Politeness: rate limit, retries


class RateLimiter:
    """A shared minimum-interval limiter (a token bucket with a small burst) for all threads.

    Each :meth:`acquire` reserves the next free slot under a lock and then sleeps outside it, so
    N workers together never exceed ``rate`` requests per second, however many there are.
    ``rate=None`` (or <= 0) disables limiting.
    """

    def __init__(self, rate: float | None, burst: int = 1) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.burst = max(1, int(burst))
        self._lock = threading.Lock()
        self._next_slot = time.monotonic()

    def acquire(self, stop_event: threading.Event | None = None) -> None:
        """Block until the caller may send one request; raise :class:`Cancelled` if stopped."""
        if stop_event is not None and stop_event.is_set():
            raise Cancelled("stopped before sending a request")
        if self.rate is None:
            return
        interval = 1.0 / self.rate
        with self._lock:
            now = time.monotonic()
            slot = max(now - (self.burst - 1) * interval, self._next_slot)
            self._next_slot = slot + interval
        _sleep(slot - now, stop_event)


def _sleep(seconds: float, stop_event: threading.Event | None) -> None:
    if seconds <= 0:
        return
    if stop_event is None:
        time.sleep(seconds)
    elif stop_event.wait(seconds):
        raise Cancelled("stopped while waiting")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), else ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a :class:`TransientError`.

    ``attempts`` counts the first try. The n-th retry waits ``backoff * 2**(n-1)`` seconds, capped
    at ``max_backoff`` and scaled by a random factor in [0.5, 1] so that workers that failed
    together do not come back together. A server's ``Retry-After`` wins when it is longer (capped at
    ``max_retry_after`` so one odd header cannot park a worker for hours).
    """

    attempts: int = DEFAULT_RETRIES + 1
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff times must be >= 0")

    def delay(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failed_attempts`` consecutive failures."""
        base = min(self.max_backoff, self.backoff * 2 ** max(0, failed_attempts - 1))
        wait = base * random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


def retry_call(
    attempt: Callable[[int], T],
    policy: RetryPolicy,
    *,
    stop_event: threading.Event | None = None,
    describe: str = "request",
) -> T:
    """Call ``attempt(n)`` for n = 1, 2, ... until it returns, retrying on :class:`TransientError`.

    Other exceptions propagate at once (they are not going to get better by asking again). After
    the last attempt a :class:`GaveUpError` carries the final error.
    """
    for number in range(1, policy.attempts + 1):
        try:
            return attempt(number)
        except TransientError as error:
            if number == policy.attempts:
                raise GaveUpError(policy.attempts, error) from error
            wait = policy.delay(number, error.retry_after)
            log.info("%s: attempt %d/%d failed (%s); retrying in %.2f s",
                     describe, number, policy.attempts, error, wait)
            _sleep(wait, stop_event)
    raise AssertionError("unreachable")  # pragma: no cover


def is_retryable_status(status: int) -> bool:
    """5xx and 429 are worth retrying; other 4xx mean the request itself is wrong."""
    return status == 429 or 500 <= status <= 599


# --------------------------------------------------------------------------------------------
# The client


Timeout = float | tuple[float, float]


class AllenClient:
    """One polite HTTP client for the Allen API, safe to share between threads.

    It holds one ``requests.Session`` (connection reuse, TLS verification on by default), the
    timeouts, the :class:`RetryPolicy` and a shared :class:`RateLimiter`. ``stop_event`` lets
    another thread interrupt every wait at once.
    """

    def __init__(
        self,
        api_base: str = DEFAULT_API_BASE,
        *,
        timeout: Timeout = (DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT),
        retry: RetryPolicy | None = None,
        rate: float | None = DEFAULT_RATE,
        pool_size: int = 8,
        session: requests.Session | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(rate)
        self.stop_event = stop_event or threading.Event()
        self._own_session = session is None
        self.session = session or make_session(pool_size)

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._own_session:
            self.session.close()

    def __enter__(self) -> "AllenClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- single requests ----------------------------------------------------------------

    def send(self, url: str, *, stream: bool = False) -> requests.Response:
        """One rate-limited GET with the client's timeouts and no retry.

        Connection problems and timeouts become :class:`TransientError`; status codes are left
        to the caller, who knows what a 404 means for its URL.
        """
        self.limiter.acquire(self.stop_event)
        try:
            return self.session.get(url, stream=stream, timeout=self.timeout)
        except requests.exceptions.SSLError as error:
            if "certificate verify failed" in str(error).lower():
                # Asking again will not make an untrusted certificate trusted.
                raise AllenApiError(
                    f"TLS certificate verification failed for {url} ({_first_line(error)}): "
                    f"check the URL and the system clock, or point REQUESTS_CA_BUNDLE at the CA "
                    f"bundle your network requires") from error
            raise TransientError(f"TLS error for {url}: {_first_line(error)}") from error
        except (requests.ConnectionError, requests.Timeout) as error:
            raise TransientError(f"{_describe_connection_error(error)} for {url}") from error

    def get_json(self, url: str) -> Any:
        """GET ``url`` as JSON, retrying transient failures per :attr:`retry`."""

        def attempt(_: int) -> Any:
            response = self.send(url)
            with response:
                if is_retryable_status(response.status_code):
                    raise TransientError(
                        f"HTTP {response.status_code} {response.reason} from {url}",
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    )
                try:
                    payload = response.json()
                except ValueError:
                    payload = None
                if response.status_code != 200 and not isinstance(payload, dict):
                    raise AllenApiError(f"HTTP {response.status_code} {response.reason} from "
                                        f"{url}: {_snippet(response.content)}")
                if payload is None:
                    content_type = response.headers.get("Content-Type", "no Content-Type")
                    raise RmaQueryError(f"{url} did not answer JSON ({content_type}): "
                                        f"{_snippet(response.content)}")
                return payload

        return retry_call(attempt, self.retry, stop_event=self.stop_event, describe=url)

    # ---- RMA listing ----------------------------------------------------------------------

    def rma_query(
        self,
        criteria: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        order: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """All rows of an RMA query, fetched page by page (``start_row``/``num_rows``).

        ``order`` defaults to a stable order for the models we use, so that pages do not overlap
        or skip rows. ``limit`` stops after that many rows. ``success: false`` raises
        :class:`RmaQueryError` with the server's message.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        if order is None:
            model = criteria.split(",", 1)[0].removeprefix("model::")
            order = _DEFAULT_ORDER.get(model)
        rows: list[dict[str, Any]] = []
        start = 0
        while limit is None or len(rows) < limit:
            want = page_size if limit is None else min(page_size, limit - len(rows))
            url = rma_query_url(self.api_base, criteria, start_row=start, num_rows=want,
                                order=order)
            answer = self.get_json(url)
            if not isinstance(answer, dict) or "success" not in answer:
                raise RmaQueryError(f"RMA query on {self.api_base} gave something that is not an "
                                    f"RMA answer: {_snippet(repr(answer).encode())}\n"
                                    f"  criteria: {criteria}")
            if not answer.get("success"):
                raise RmaQueryError(f"RMA query failed on {self.api_base}: "
                                    f"{answer.get('msg')!r}\n  criteria: {criteria}")
            page = answer.get("msg") or []
            if not isinstance(page, list):
                raise RmaQueryError(f"RMA query on {self.api_base} returned msg={page!r}, "
                                    f"expected a list of rows\n  criteria: {criteria}")
            rows.extend(page)
            start += len(page)
            total = answer.get("total_rows")
            if not page or (isinstance(total, int) and start >= total):
                break
        return rows if limit is None else rows[:limit]

    def list_section_images(
        self, data_set_ids: Iterable[int], *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> list[dict[str, Any]]:
        """SectionImage records of the given SectionDataSets, in data-set then section order."""
        images: list[dict[str, Any]] = []
        for data_set_id in data_set_ids:
            images += self.rma_query(section_image_criteria(data_set_id), page_size=page_size)
        return images

    def list_section_data_sets(
        self,
        *,
        product: str | None = "Mouse",
        plane: str | None = None,
        failed: bool | None = False,
        limit: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> list[dict[str, Any]]:
        """SectionDataSet records matching the filters (see :func:`section_data_set_criteria`)."""
        return self.rma_query(section_data_set_criteria(product, plane, failed),
                              page_size=page_size, limit=limit)

    def list_image_ids_by_filter(
        self,
        *,
        product: str | None = "Mouse",
        plane: str | None = None,
        failed: bool | None = False,
        max_data_sets: int | None = None,
        max_images: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> list[int]:
        """SectionImage ids of the data sets matching the filters (data sets first, then images).

        ``max_data_sets``/``max_images`` bound the listing: "Mouse" alone has thousands of data
        sets with tens of images each.
        """
        data_sets = self.list_section_data_sets(product=product, plane=plane, failed=failed,
                                                limit=max_data_sets, page_size=page_size)
        ids: list[int] = []
        for data_set in data_sets:
            for image in self.list_section_images([int(data_set["id"])], page_size=page_size):
                ids.append(int(image["id"]))
                if max_images is not None and len(ids) >= max_images:
                    return ids
        return ids


def make_session(pool_size: int = 8) -> requests.Session:
    """A ``requests.Session`` sized for ``pool_size`` threads, with urllib3's own retries off.

    Retries are ours (:func:`retry_call`), so they see every failure and honour ``Retry-After``;
    letting urllib3 retry underneath would multiply the attempts.
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # Say who we are, so the Allen team can tell this client apart if it ever misbehaves.
    session.headers["User-Agent"] = f"allen-sr/0.1 python-requests/{requests.__version__}"
    return session


def _describe_connection_error(error: Exception) -> str:
    if isinstance(error, requests.ConnectTimeout):
        return f"connection timed out ({error.__class__.__name__})"
    if isinstance(error, requests.ReadTimeout):
        return "no answer within the read timeout"
    text = str(error)
    return f"connection error: {text[:300]}"


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:limit]


def _snippet(content: bytes, limit: int = 200) -> str:
    text = content[:limit].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return repr(text + ("..." if len(content) > limit else ""))


# --------------------------------------------------------------------------------------------
# Module-level conveniences (one client per call)


def list_section_images(
    data_set_ids: Sequence[int], *, api_base: str = DEFAULT_API_BASE, **client_options: Any
) -> list[dict[str, Any]]:
    """SectionImage records of the given SectionDataSets (one client for this call)."""
    with AllenClient(api_base, **client_options) as client:
        return client.list_section_images(data_set_ids)


def list_section_data_sets(
    *,
    product: str | None = "Mouse",
    plane: str | None = None,
    failed: bool | None = False,
    limit: int | None = None,
    api_base: str = DEFAULT_API_BASE,
    **client_options: Any,
) -> list[dict[str, Any]]:
    """SectionDataSet records matching the filters (one client for this call)."""
    with AllenClient(api_base, **client_options) as client:
        return client.list_section_data_sets(product=product, plane=plane, failed=failed,
                                             limit=limit)


def list_image_ids_by_filter(
    *,
    product: str | None = "Mouse",
    plane: str | None = None,
    max_data_sets: int | None = None,
    max_images: int | None = None,
    api_base: str = DEFAULT_API_BASE,
    **client_options: Any,
) -> list[int]:
    """SectionImage ids of filtered data sets (see :meth:`AllenClient.list_image_ids_by_filter`)."""
    with AllenClient(api_base, **client_options) as client:
        return client.list_image_ids_by_filter(product=product, plane=plane,
                                               max_data_sets=max_data_sets,
                                               max_images=max_images)
