"""What to ask the Allen Brain Atlas API for: image download URLs, RMA queries, the stock ids.

The API (https://api.brain-map.org) answers RMA queries such as::

    /api/v2/data/query.json?criteria=model::SectionImage,rma::criteria,[data_set_id$eq<ID>]

with ``{"success": true, "start_row": 0, "num_rows": N, "total_rows": T, "msg": [...]}``, and
serves section images through ``/api/v2/image_download/<SectionImage id>``. Pure functions; the
client that sends them is :mod:`allen_sr.data.allen_api`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from allen_sr.errors import InvalidInputError

__all__ = [
    "DEFAULT_API_BASE", "DEFAULT_PAGE_SIZE", "DEFAULT_ORDER", "STOCK_IMAGE_IDS", "Region",
    "image_download_url", "section_image_criteria", "section_data_set_criteria", "rma_query_url",
    "check_api_base",
]

DEFAULT_API_BASE = "https://api.brain-map.org"
# Allen's own default page size is 50; bigger pages mean fewer round trips for large listings.
DEFAULT_PAGE_SIZE = 2000
# Without an order, paged RMA answers are not guaranteed to be stable between pages.
DEFAULT_ORDER = {
    "SectionImage": "sub_images.section_number",
    "SectionDataSet": "data_sets.id",
}

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


@dataclass(frozen=True)
class Region:
    """A rectangle of a section image, in the API's convention.

    ``left``/``top`` are full-resolution pixel coordinates; ``width``/``height`` are pixels of the
    downsampled level that is asked for.
    """

    left: int
    top: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.left < 0 or self.top < 0:
            raise InvalidInputError(f"region left/top must be >= 0, got {self.left}, {self.top}")
        if self.width <= 0 or self.height <= 0:
            raise InvalidInputError(f"region width/height must be > 0, got {self.width}x{self.height}")


def check_api_base(url: str) -> None:
    """InvalidInputError unless ``url`` looks like an API base (``https://host[:port]``)."""
    if not re.match(r"^https?://[^/\s]+/?$", url):  # a path would come before /api/v2/...: every image a 404
        raise InvalidInputError(f"--api_base must look like https://host[:port] (no path: /api/v2/... is added), "
                                f"got {url!r}")


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
        raise InvalidInputError(f"downsample must be >= 0, got {downsample}")
    if quality is not None and not 0 <= quality <= 100:
        raise InvalidInputError(f"quality must be within 0-100, got {quality}")
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
        raise InvalidInputError(f"an RMA value cannot contain a single quote: {value!r}")
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
