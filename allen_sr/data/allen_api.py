"""The HTTP client for the Allen Brain Atlas API: one session, timeouts, retries, a rate limit.

:class:`AllenClient` owns *how* we talk to the API, so the downloader and any other caller share
one behaviour: one ``requests.Session``, connect/read timeouts, retries with exponential backoff
and jitter on connection errors, 5xx and 429 (honouring ``Retry-After``), and one rate limiter
shared by every thread. What to ask for is :mod:`allen_sr.data.allen_urls`. No TensorFlow here.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable, Sequence

import requests
from requests.adapters import HTTPAdapter

from allen_sr.data.allen_urls import (
    DEFAULT_API_BASE,
    DEFAULT_ORDER,
    DEFAULT_PAGE_SIZE,
    rma_query_url,
    section_data_set_criteria,
    section_image_criteria,
)
from allen_sr.data.errors import AllenApiError, RmaQueryError, TransientError, snippet
from allen_sr.data.retry import (
    DEFAULT_RATE,
    RateLimiter,
    RetryPolicy,
    is_retryable_status,
    parse_retry_after,
    retry_call,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "AllenClient",
    "make_session",
    "list_section_images",
    "list_section_data_sets",
    "list_image_ids_by_filter",
]

DEFAULT_CONNECT_TIMEOUT = 10.0
# Between two received bytes, not for the whole body: the server renders downsampled images on
# the fly and can pause for a while before the first byte of a large one.
DEFAULT_READ_TIMEOUT = 60.0

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
                                        f"{url}: {snippet(response.content)}")
                if payload is None:
                    content_type = response.headers.get("Content-Type", "no Content-Type")
                    raise RmaQueryError(f"{url} did not answer JSON ({content_type}): "
                                        f"{snippet(response.content)}")
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
            order = DEFAULT_ORDER.get(model)
        rows: list[dict[str, Any]] = []
        start = 0
        while limit is None or len(rows) < limit:
            want = page_size if limit is None else min(page_size, limit - len(rows))
            url = rma_query_url(self.api_base, criteria, start_row=start, num_rows=want,
                                order=order)
            answer = self.get_json(url)
            if not isinstance(answer, dict) or "success" not in answer:
                raise RmaQueryError(f"RMA query on {self.api_base} gave something that is not an "
                                    f"RMA answer: {snippet(repr(answer).encode())}\n"
                                    f"  criteria: {criteria}")
            if not answer.get("success"):
                raise RmaQueryError(f"RMA query failed on {self.api_base}: "
                                    f"{answer.get('msg')!r}\n  criteria: {criteria}")
            page = answer.get("msg") or []
            if not isinstance(page, list):
                raise RmaQueryError(f"RMA query on {self.api_base} returned msg={page!r}, "
                                    f"expected a list of rows\n  criteria: {criteria}")
            for number, row in enumerate(page, start=start):
                if not _has_numeric_id(row):
                    raise RmaQueryError(f"RMA query row {number} has no numeric id: {snippet(repr(row).encode())} "
                                        f"(from {url}); check --api_base, or report it if the Allen API changed")
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


def _has_numeric_id(row: Any) -> bool:
    """An RMA row we can read: an object whose "id" is a whole number >= 0 (or its digits)."""
    value = row.get("id") if isinstance(row, dict) else None
    if isinstance(value, str):
        return value.isascii() and value.isdigit()
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
