"""A real HTTP server on 127.0.0.1 that stands in for the Allen Brain Atlas API in tests.

It answers the URL shapes allen-sr uses:

* ``/api/v2/data/query.json?criteria=...`` -- RMA listings of ``SectionImage`` (by
  ``[data_set_id$eq<ID>]``) and ``SectionDataSet`` (by ``[failed$eq'false']``,
  ``products[abbreviation$eq'X']``, ``plane_of_section[name$eq'Y']``), paged by
  ``rma::options[start_row$eqK][num_rows$eqM]``;
* ``/api/v2/image_download/<id>`` and ``/api/v2/section_image_download/<id>`` with ``downsample``
  (halving per level), ``quality`` and ``left/top/width/height``.

Images are small JPEGs made with numpy + Pillow; :meth:`AllenStandIn.expected_bytes` gives the
exact bytes the server sends for a request, so tests can check byte-identity.

Faults are injected per image id or globally for the first K matching requests
(:meth:`AllenStandIn.inject`); every request is logged (:attr:`AllenStandIn.requests`).

Use it as a context manager::

    with AllenStandIn() as server:
        ids = server.add_images(3)
        server.inject("500", image_id=ids[0], times=2)
        ... download from server.api_base ...
        assert len(server.image_requests(ids[0])) == 3

or as a process: ``python tests/allen_stand_in.py --port 0 --images 10`` prints one JSON line
(``{"api_base": ..., "image_ids": [...]}``) and serves until killed; ``GET /_stand_in/requests``
returns its request log as JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

__all__ = ["AllenStandIn", "Fault", "RequestRecord", "FAULT_KINDS"]

# What inject() understands. A number ("500", "503", "429", "404", ...) answers that status.
FAULT_KINDS = (
    "reset",      # close the socket with a TCP RST before answering anything
    "reset_mid",  # send headers and half the body, then RST
    "truncate",   # promise the full Content-Length, send half the body, close cleanly
    "corrupt",    # 200 image/jpeg, Content-Length matches, but only the first half of the JPEG
    "slow",       # wait `delay` seconds before answering (longer than a client's read timeout)
    "html",       # 200 with an HTML page
    "rma_error",  # an RMA answer with success: false (for query requests)
)

_IMAGE_PATH = re.compile(r"^/api/v2/(?:section_)?image_download/(\d+)$")
_QUERY_PATH = "/api/v2/data/query.json"


@dataclass
class Fault:
    """One injected fault; ``remaining`` is how many more requests it hits (None = all)."""

    kind: str
    image_id: int | None = None
    remaining: int | None = 1
    target: str = "image"  # "image", "query" or "any"
    retry_after: str | None = "1"
    delay: float = 2.0
    message: str = "stand-in: injected failure"


@dataclass
class RequestRecord:
    """One request the server received."""

    time: float
    method: str
    path: str
    query: dict[str, str]
    kind: str  # "image", "query" or "other"
    image_id: int | None = None
    fault: str | None = None
    status: int | None = None
    start_row: int | None = None
    num_rows: str | None = None


@dataclass
class _Image:
    image_id: int
    pixels: np.ndarray | None  # full-resolution RGB, or None for a ready-made `picture`
    data_set_id: int | None = None
    section_number: int = 0
    picture: Image.Image | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) at full resolution."""
        if self.picture is not None:
            return self.picture.size
        return self.pixels.shape[1], self.pixels.shape[0]


@dataclass
class _DataSet:
    data_set_id: int
    product: str = "Mouse"
    plane: str = "coronal"
    failed: bool = False
    image_ids: list[int] = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck in a "slow" fault must not block shutdown
    allow_reuse_address = True
    request_queue_size = 64
    stand_in: "AllenStandIn"

    def get_request(self) -> tuple[socket.socket, Any]:
        # Counted before accept(): with TLS, accept() also runs the handshake, which may fail.
        self.stand_in._count_connection()
        return super().get_request()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up on purpose (timeouts, our own resets) are part of the tests.
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, OSError, ValueError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API; every answer has a length
    server_version = "AllenStandIn/1.0"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.stand_in._handle(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class AllenStandIn:
    """The stand-in server. ``latency`` (s) is added to every request; ``bandwidth`` (bytes/s,
    per connection) throttles bodies; both can be changed while it runs."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
                 bandwidth: float | None = None, jpeg_quality: int = 90,
                 tls: tuple[str, str] | None = None) -> None:
        self.host, self._port = host, port
        self.tls = tls  # (certificate file, key file): serve HTTPS instead of HTTP
        self.latency = latency
        self.bandwidth = bandwidth
        self.jpeg_quality = jpeg_quality
        self._images: dict[int, _Image] = {}
        self._data_sets: dict[int, _DataSet] = {}
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._cache: dict[tuple, bytes] = {}
        self._stopping = threading.Event()
        self.connections = 0  # TCP connections accepted (or attempted, with TLS)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.raw_rows: dict[str, list[Any]] = {}  # model name -> the rows every listing of it answers, as given

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> "AllenStandIn":
        """Bind (port 0 = any free port) and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self._port), _Handler)
        self._server.stand_in = self
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="allen-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; sleeping handlers wake up and give up."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "AllenStandIn":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stand-in is not running; call start()")
        return self._server.server_address[1]

    @property
    def api_base(self) -> str:
        """``http://127.0.0.1:<port>`` (https with ``tls``), to pass as the client's API base."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # ---- content ---------------------------------------------------------------------------

    def add_image(self, image_id: int, *, width: int = 64, height: int = 48,
                  data_set_id: int | None = None, section_number: int | None = None,
                  seed: int | None = None) -> int:
        """Register a section image made of a smooth gradient plus noise; returns its id."""
        rng = np.random.default_rng(image_id if seed is None else seed)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([x / max(width, 1), y / max(height, 1),
                         (x + y) / max(width + height, 1)], axis=-1) * 200 + 30
        noise = rng.normal(0, 25, size=(height, width, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        with self._lock:
            self._images[int(image_id)] = _Image(int(image_id), pixels, data_set_id,
                                                 section_number if section_number is not None
                                                 else len(self._images))
            self._cache = {key: value for key, value in self._cache.items()
                           if key[0] != int(image_id)}
            if data_set_id is not None:
                data_set = self._data_sets.setdefault(data_set_id, _DataSet(data_set_id))
                if int(image_id) not in data_set.image_ids:
                    data_set.image_ids.append(int(image_id))
        return int(image_id)

    def add_picture(self, image_id: int, picture: Image.Image) -> int:
        """Register a ready-made Pillow image (any mode JPEG can hold, e.g. a huge flat "L" one).

        Cheaper than :meth:`add_image` for very large test images: no RGB array is kept.
        """
        with self._lock:
            self._images[int(image_id)] = _Image(int(image_id), None, picture=picture,
                                                 section_number=len(self._images))
            self._cache = {key: value for key, value in self._cache.items()
                           if key[0] != int(image_id)}
        return int(image_id)

    def add_images(self, count: int, *, first_id: int = 1000, **image_options: Any) -> list[int]:
        """Register ``count`` images with consecutive ids from ``first_id``; returns the ids."""
        return [self.add_image(first_id + index, **image_options) for index in range(count)]

    def add_data_set(self, data_set_id: int, *, product: str = "Mouse", plane: str = "coronal",
                     failed: bool = False, image_count: int = 0, first_image_id: int | None = None,
                     **image_options: Any) -> list[int]:
        """Register a SectionDataSet, optionally with ``image_count`` new images (their ids)."""
        with self._lock:
            data_set = self._data_sets.setdefault(data_set_id, _DataSet(data_set_id))
            data_set.product, data_set.plane, data_set.failed = product, plane, failed
        first = first_image_id if first_image_id is not None else data_set_id * 1000
        return [self.add_image(first + index, data_set_id=data_set_id, section_number=index,
                               **image_options) for index in range(image_count)]

    def image_size(self, image_id: int, downsample: int = 0) -> tuple[int, int]:
        """(width, height) of the image at a downsample level."""
        width, height = self._images[image_id].size
        factor = 2 ** _level(downsample)
        return max(1, width // factor), max(1, height // factor)

    def expected_bytes(self, image_id: int, *, downsample: int = 0, quality: int | None = None,
                       left: int | None = None, top: int | None = None,
                       width: int | None = None, height: int | None = None) -> bytes:
        """The exact body the server sends for this image and these parameters."""
        key = (image_id, downsample, quality, left, top, width, height)
        with self._lock:
            cached = self._cache.get(key)
            source = self._images[image_id]
        if cached is not None:
            return cached
        image = source.picture if source.picture is not None else Image.fromarray(source.pixels)
        factor = 2 ** _level(downsample)
        if factor > 1:
            image = image.reduce(factor) if min(image.size) >= factor else image.resize((1, 1))
        if width is not None and height is not None:
            x0, y0 = (left or 0) // factor, (top or 0) // factor
            image = image.crop((x0, y0, min(image.width, x0 + width),
                                min(image.height, y0 + height)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG",
                   quality=quality if quality is not None else self.jpeg_quality)
        data = buffer.getvalue()
        with self._lock:
            self._cache[key] = data
        return data

    # ---- faults and the request log -------------------------------------------------------

    def inject(self, kind: str, *, image_id: int | None = None, times: int | None = 1,
               target: str = "image", retry_after: str | None = "1", delay: float = 2.0,
               message: str = "stand-in: injected failure") -> Fault:
        """Make the next ``times`` matching requests fail with ``kind`` (None = every request).

        ``image_id`` limits it to one image; otherwise it hits any request of ``target``
        ("image", "query" or "any"). Kinds: see :data:`FAULT_KINDS`, or an HTTP status number.
        """
        if kind not in FAULT_KINDS and not kind.isdigit():
            raise ValueError(f"unknown fault {kind!r}; use one of {FAULT_KINDS} or a status code")
        if target not in ("image", "query", "any"):
            raise ValueError(f"target must be image, query or any, not {target!r}")
        fault = Fault(kind, image_id, times, target, retry_after, delay, message)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def image_requests(self, image_id: int | None = None) -> list[RequestRecord]:
        """Logged image-download requests (for one image, or all)."""
        return [record for record in self.requests if record.kind == "image"
                and (image_id is None or record.image_id == image_id)]

    def query_requests(self) -> list[RequestRecord]:
        """Logged RMA query requests."""
        return [record for record in self.requests if record.kind == "query"]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def _take_fault(self, kind: str, image_id: int | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining == 0:
                    continue
                if fault.target not in (kind, "any"):
                    continue
                if fault.image_id is not None and fault.image_id != image_id:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    # ---- serving ---------------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        parts = urlsplit(handler.path)
        query = {key: values[-1]
                 for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        match = _IMAGE_PATH.match(parts.path)
        kind = "image" if match else "query" if parts.path == _QUERY_PATH else "other"
        record = RequestRecord(time.time(), handler.command, parts.path, query, kind,
                               int(match.group(1)) if match else None)
        with self._lock:
            self._log.append(record)
        if kind == "other":
            if parts.path == "/_stand_in/requests":
                log = json.dumps([asdict(r) for r in self.requests]).encode()
                self._send(handler, record, 200, log,
                           "application/json")
            else:
                self._send(handler, record, 404, b"<html><body>404 Not Found</body></html>",
                           "text/html")
            return
        fault = self._take_fault(kind, record.image_id)
        record.fault = fault.kind if fault else None
        if self.latency and self._stopping.wait(self.latency):
            return
        if fault is not None and self._apply_fault(handler, record, fault):
            return
        if kind == "query":
            self._answer_query(handler, record)
        else:
            self._answer_image(handler, record)

    def _apply_fault(self, handler: _Handler, record: RequestRecord, fault: Fault) -> bool:
        """Carry out a fault; True if the request is fully answered (or dropped)."""
        if fault.kind.isdigit():
            status = int(fault.kind)
            headers = ({"Retry-After": fault.retry_after}
                       if status == 429 and fault.retry_after else {})
            body = f"<html><body><h1>{status}</h1><p>{fault.message}</p></body></html>".encode()
            self._send(handler, record, status, body, "text/html", headers)
            return True
        if fault.kind == "reset":
            record.status = 0
            self._reset(handler)
            return True
        if fault.kind == "slow":
            if self._stopping.wait(fault.delay):
                return True
            return False  # then answer normally, long after the client gave up
        if fault.kind == "html":
            body = (b"<!DOCTYPE html><html><head><title>Scheduled maintenance</title></head>"
                    b"<body><p>The Allen Brain Atlas is down for maintenance.</p></body></html>")
            self._send(handler, record, 200, body, "text/html; charset=utf-8")
            return True
        if fault.kind == "rma_error":
            body = json.dumps({"success": False, "id": -1, "start_row": 0, "num_rows": 0,
                               "total_rows": 0, "msg": fault.message}).encode()
            self._send(handler, record, 200, body, "application/json")
            return True
        if record.kind != "image":
            return False
        body = self._image_body(record)
        if body is None:
            return False
        if fault.kind == "corrupt":
            self._send(handler, record, 200, body[: len(body) // 2], "image/jpeg")
            return True
        # truncate / reset_mid: promise everything, deliver half.
        record.status = 200
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        self._write_body(handler, body[: len(body) // 2])
        if fault.kind == "reset_mid":
            self._reset(handler)
        else:
            handler.close_connection = True
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_WR)
        return True

    def _reset(self, handler: _Handler) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN. The socket's file
        # objects hold references to it, so they must be closed first for close() to be real.
        handler.close_connection = True
        connection = handler.connection
        try:
            handler.wfile.flush()
        except OSError:
            pass
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.wfile.close()
        handler.rfile.close()
        connection.close()

    def _image_body(self, record: RequestRecord) -> bytes | None:
        image_id = record.image_id
        with self._lock:
            known = image_id in self._images
        if not known:
            return None
        query = record.query

        def number(name: str) -> int | None:
            value = query.get(name)
            return int(value) if value not in (None, "") else None

        return self.expected_bytes(image_id, downsample=number("downsample") or 0,
                                   quality=number("quality"), left=number("left"),
                                   top=number("top"), width=number("width"),
                                   height=number("height"))

    def _answer_image(self, handler: _Handler, record: RequestRecord) -> None:
        try:
            body = self._image_body(record)
        except ValueError:
            self._send(handler, record, 400, b"bad parameters", "text/plain")
            return
        if body is None:
            # The real API answers unknown ids with an error page, not an image.
            self._send(handler, record, 404, b"<html><body>Not Found</body></html>", "text/html")
            return
        self._send(handler, record, 200, body, "image/jpeg")

    def _answer_query(self, handler: _Handler, record: RequestRecord) -> None:
        criteria = record.query.get("criteria", "")
        start = re.search(r"\[start_row\$eq(\d+)\]", criteria)
        count = re.search(r"\[num_rows\$eq(\w+)\]", criteria)
        start_row = int(start.group(1)) if start else int(record.query.get("start_row", 0))
        num_rows = count.group(1) if count else record.query.get("num_rows", "50")
        record.start_row, record.num_rows = start_row, num_rows
        try:
            rows = self._rows_for(criteria)
        except ValueError as error:
            body = json.dumps({"success": False, "id": -1, "start_row": start_row, "num_rows": 0,
                               "total_rows": 0, "msg": str(error)}).encode()
            self._send(handler, record, 200, body, "application/json")
            return
        page = rows[start_row:] if num_rows == "all" else rows[start_row:start_row + int(num_rows)]
        body = json.dumps({"success": True, "id": 0, "start_row": start_row,
                           "num_rows": len(page), "total_rows": len(rows), "msg": page}).encode()
        self._send(handler, record, 200, body, "application/json")

    def _rows_for(self, criteria: str) -> list[dict[str, Any]]:
        model = re.match(r"model::(\w+)", criteria)
        if not model:
            raise ValueError(f"Data Access error in query: {criteria!r} has no model::")
        name = model.group(1)
        if name in self.raw_rows:  # malformed rows, for tests of what a client makes of them
            return list(self.raw_rows[name])
        with self._lock:
            images = dict(self._images)
            data_sets = dict(self._data_sets)
        if name == "SectionImage":
            wanted = re.search(r"\[data_set_id\$(eq|in)([\d,]+)\]", criteria)
            ids = {int(v) for v in wanted.group(2).split(",")} if wanted else None
            chosen = [image for image in images.values()
                      if ids is None or image.data_set_id in ids]
            chosen.sort(key=lambda im: (im.data_set_id or 0, im.section_number, im.image_id))
            return [self._image_row(image) for image in chosen]
        if name == "SectionDataSet":
            failed = re.search(r"\[failed\$eq'?(true|false)'?\]", criteria)
            product = re.search(r"products\[abbreviation\$eq'([^']*)'\]", criteria)
            plane = re.search(r"plane_of_section\[name\$eq'([^']*)'\]", criteria)
            ordered = sorted(data_sets.values(), key=lambda d: d.data_set_id)
            chosen = [data_set for data_set in ordered
                      if (failed is None or data_set.failed == (failed.group(1) == "true"))
                      and (product is None or data_set.product == product.group(1))
                      and (plane is None or data_set.plane == plane.group(1))]
            return [{"id": d.data_set_id, "failed": d.failed, "product_abbreviation": d.product,
                     "plane_of_section": d.plane, "section_thickness": 25.0} for d in chosen]
        raise ValueError(f"Data Access error: the stand-in does not know model {name}")

    def _image_row(self, image: _Image) -> dict[str, Any]:
        width, height = image.size
        return {"id": image.image_id, "data_set_id": image.data_set_id,
                "section_number": image.section_number, "width": width, "height": height,
                "image_width": width, "image_height": height, "resolution": 1.0, "x": 0, "y": 0}

    def _send(self, handler: _Handler, record: RequestRecord, status: int, body: bytes,
              content_type: str, headers: dict[str, str] | None = None) -> None:
        record.status = status
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            self._write_body(handler, body)
        except OSError:
            handler.close_connection = True

    def _write_body(self, handler: _Handler, body: bytes) -> None:
        bandwidth = self.bandwidth
        if not bandwidth:
            handler.wfile.write(body)
            return
        # Small chunks, each followed by the time it "takes" on the simulated link.
        chunk = max(1024, int(bandwidth / 50))
        for offset in range(0, len(body), chunk):
            piece = body[offset:offset + chunk]
            handler.wfile.write(piece)
            handler.wfile.flush()
            if self._stopping.wait(len(piece) / bandwidth):
                raise ConnectionAbortedError("stand-in stopping")


def _level(downsample: int) -> int:
    """A downsample level the server can compute (2**1e11 would take minutes and gigabytes): 400 beyond 62."""
    if not 0 <= downsample <= 62:
        raise ValueError(f"downsample={downsample} is out of range")
    return downsample


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in as a process until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="Serve a stand-in Allen API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    parser.add_argument("--images", type=int, default=10, help="number of images to serve")
    parser.add_argument("--first_id", type=int, default=1000, help="id of the first image")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s per connection")
    args = parser.parse_args(argv)
    server = AllenStandIn(port=args.port, latency=args.latency, bandwidth=args.bandwidth)
    ids = server.add_images(args.images, first_id=args.first_id, width=args.width,
                            height=args.height)
    server.start()
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    print(json.dumps({"api_base": server.api_base, "image_ids": ids}), flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
