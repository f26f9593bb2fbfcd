"""Images of chat requests: `data:` URIs, and local files under the one folder the server was allowed to read.

The server is offline by design: a remote URL is refused, never fetched. Sizes are checked before decoding (the
base64 text, the file), and the pixels before PIL decodes them (atp_cli.image_input refuses decompression bombs).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from atp_cli.errors import InputError
from atp_cli.image_input import load_image

DEFAULT_MAX_BYTES = 20 * 2**20


class PayloadTooLarge(InputError):
    """An image (or a request body) over the configured size."""


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int = DEFAULT_MAX_BYTES  # an image's encoded size
    allowed_dir: Path | None = None  # local files are read only from under this folder


def image_from_url(url: str, policy: ImagePolicy) -> Image.Image:
    """The RGB image an `image_url` names, or InputError (PayloadTooLarge for sizes) saying why not."""
    if url.startswith("data:"):
        return load_image(_data_uri_bytes(url, policy.max_bytes))
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https", "ftp"):
        raise InputError("remote image URLs are not fetched (this server works offline): send the image as a "
                         "data: URI (base64), or as a file under the folder the server was started with "
                         "(--allow-images)")
    if scheme not in ("file", ""):
        raise InputError(f"unsupported image URL scheme {scheme!r}: use a data: URI or a local file")
    return load_image(_local_file_bytes(url, policy))


def _data_uri_bytes(url: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InputError("a data: image URL must be base64: data:image/<type>;base64,<data>")
    if len(payload) * 3 // 4 > max_bytes:  # before decoding anything
        raise PayloadTooLarge(f"the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"the image's base64 data does not decode: {e}") from e


def _local_file_bytes(url: str, policy: ImagePolicy) -> bytes:
    if policy.allowed_dir is None:
        raise InputError("this server reads no local image files (start it with --allow-images DIR); send the "
                         "image as a data: URI")
    raw = unquote(urlparse(url).path) if url.startswith("file:") else url
    root = policy.allowed_dir.resolve()
    path = (root / raw).resolve()  # an absolute `raw` stands for itself
    if not path.is_relative_to(root):
        raise InputError(f"image files are read only from under {root}")
    if not path.is_file():
        raise InputError(f"image file not found under {root}: {raw}")
    if path.stat().st_size > policy.max_bytes:
        raise PayloadTooLarge(f"the image file is larger than {policy.max_bytes} bytes")
    return path.read_bytes()
