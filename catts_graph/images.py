"""The one image loader: references in state, decoded PIL images inside nodes.

State that reaches a checkpointer must be serialisable, so the graph keeps every image as a string
*reference* (a local path, an http(s) URL, or a ``data:`` URI) and decodes it inside the nodes that
need pixels. :func:`to_reference` turns what a user passes (path, URL, data URI, bytes, PIL image)
into a reference; :func:`load_image` turns a reference into a checked RGB PIL image.

Every input is bounded before it costs anything: a file's size is checked before it is read, a data
URI's before it is decoded, an image's pixels and aspect ratio from its header before its pixels
are. A URL is fetched only when allowed, within one deadline for the whole download, and never from
a private, loopback or link-local address unless that is allowed too (checked at every redirect).
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from catts_graph.config import CATTSConfig


class InputError(ValueError):
    """The caller's input is wrong; the message names the input and what was expected."""


def _png_data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + to_base64_png(image)


def to_reference(image: Any, *, name: str = "image", max_bytes: int = 100_000_000) -> str:
    """A serialisable string reference for ``image`` (path, URL, data URI, bytes or PIL image).

    Bytes (at most ``max_bytes``) are checked to be an image and kept as a data URI; a PIL image is
    encoded as PNG.
    """
    if isinstance(image, Image.Image):
        return _png_data_uri(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise InputError(f"{name}: got empty bytes, expected the bytes of an image file")
        if len(data) > max_bytes:
            raise InputError(f"{name}: {len(data)} bytes, over the limit of {max_bytes} (max_image_bytes)")
        mime = _sniff(data, name)
        return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    if isinstance(image, Path):
        image = str(image)
    if isinstance(image, str):
        if not image.strip():
            raise InputError(f"{name}: got an empty string, expected a path, URL or data URI")
        return image
    raise InputError(
        f"{name}: got {type(image).__name__}, expected a path, http(s) URL, data URI, bytes or PIL image"
    )


def _sniff(data: bytes, name: str) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format or "PNG"
    except Image.DecompressionBombError as err:
        raise InputError(f"{name}: refused as a decompression bomb, over the limit ({err})") from None
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{name}: the bytes given are not an image PIL can read ({err})") from None
    return Image.MIME.get(fmt, "image/png")


def is_url(reference: str) -> bool:
    return reference.startswith(("http://", "https://"))


def read_reference(
    reference: str,
    *,
    name: str = "image",
    allow_url: bool = False,
    url_max_bytes: int = 20_000_000,
    url_timeout: float = 10.0,
    max_bytes: int = 100_000_000,
    allow_private: bool = False,
) -> bytes:
    """The raw bytes behind a reference, within limits checked before the bytes are read.

    A file or data URI holds at most ``max_bytes``. A URL is fetched only when ``allow_url``, at most
    ``url_max_bytes`` within ``url_timeout`` seconds in all, and only from public addresses unless
    ``allow_private`` (see :func:`fetch_url`).
    """
    if reference.startswith("data:"):
        header, _, payload = reference.partition(",")
        if ";base64" not in header:
            raise InputError(f"{name}: data URI must be base64-encoded")
        if len(payload) // 4 * 3 > max_bytes:
            raise InputError(
                f"{name}: data URI holds about {len(payload) // 4 * 3} bytes, over the limit of "
                f"{max_bytes} (max_image_bytes)"
            )
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{name}: data URI payload is not valid base64") from None
    if is_url(reference):
        if not allow_url:
            raise InputError(
                f"{name}: {reference!r} is a URL and URL fetching is off; pass --allow-url on the "
                "command line, set allow_url_fetch=True (CATTS_ALLOW_URL_FETCH=1), or pass a local file"
            )
        return fetch_url(
            reference, name=name, max_bytes=url_max_bytes, timeout=url_timeout, allow_private=allow_private
        )
    path = Path(reference).expanduser()
    if not path.is_file():
        raise InputError(f"{name}: no file at {reference!r}")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(
            f"{name}: {reference!r} is {size} bytes, over the limit of {max_bytes} (max_image_bytes); "
            "not read"
        )
    return path.read_bytes()


_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
_CHUNK_BYTES = 65_536


def fetch_url(
    url: str, *, name: str = "image", max_bytes: int, timeout: float, allow_private: bool = False
) -> bytes:
    """GET ``url``: at most ``max_bytes``, within ``timeout`` seconds for the whole download.

    The deadline covers the name lookup, every redirect, the headers and the body: a server that
    trickles a byte at a time is cut off at the deadline, not allowed ``timeout`` per read.
    Redirects (at most 5) are followed here, not by the HTTP library, so that every hop's address is
    checked: unless ``allow_private``, a host that resolves to a private, loopback, link-local or
    otherwise non-public address is refused (a server-side request forgery guard), and the
    connection goes to the address that was checked, not to a second DNS answer.
    """
    deadline = time.monotonic() + timeout
    original = url
    for _ in range(_MAX_REDIRECTS + 1):
        where = repr(url) if url == original else f"{url!r} (redirected from {original!r})"
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as err:  # a port out of range
            raise InputError(f"{name}: {where} is not a valid URL ({err})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"{name}: {where} is not an http(s) URL")
        try:
            location, data = _get(parts, port, where, name, deadline, max_bytes, allow_private)
        except TimeoutError:
            raise InputError(
                f"{name}: fetching {original!r} took longer than {timeout:g} s (url_timeout)"
            ) from None
        except InputError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:  # ValueError: InvalidURL
            if time.monotonic() >= deadline:
                raise InputError(
                    f"{name}: fetching {original!r} took longer than {timeout:g} s (url_timeout)"
                ) from None
            raise InputError(f"{name}: could not fetch {where} ({type(err).__name__}: {err})") from None
        if location is None:
            return data
        url = urllib.parse.urljoin(url, location)
    raise InputError(f"{name}: {original!r} redirected more than {_MAX_REDIRECTS} times")


def _get(
    parts: urllib.parse.SplitResult,
    port: int,
    where: str,
    name: str,
    deadline: float,
    max_bytes: int,
    allow_private: bool,
) -> tuple[str | None, bytes]:
    """One request: (redirect target or None, body); ``where`` names it in errors. Raises
    TimeoutError at the deadline."""
    host = parts.hostname or ""
    address = _checked_address(host, port, where, name, deadline, allow_private)
    remaining = _remaining(deadline)
    connection: http.client.HTTPConnection = (
        _PinnedHTTPSConnection(host, port, address, remaining)
        if parts.scheme == "https"
        else _PinnedHTTPConnection(host, port, address, remaining)
    )
    # Socket timeouts bound each wait; the watchdog ends the exchange at the deadline whatever the
    # server does (headers trickled a byte at a time included).
    watchdog = threading.Timer(remaining, _abort, args=(connection,))
    watchdog.daemon = True
    watchdog.start()
    try:
        target = parts.path or "/"
        connection.request(
            "GET", target + (f"?{parts.query}" if parts.query else ""), headers={"User-Agent": "catts-graph"}
        )
        response = connection.getresponse()
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise InputError(f"{name}: {where} answered HTTP {response.status} without a Location")
            return location, b""
        if not 200 <= response.status < 300:
            raise InputError(f"{name}: fetching {where} failed with HTTP {response.status} {response.reason}")
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise InputError(
                f"{name}: {where} is {int(declared)} bytes, over the limit of {max_bytes} (url_max_bytes)"
            )
        chunks: list[bytes] = []
        received = 0
        while received <= max_bytes:
            if connection.sock is not None:
                connection.sock.settimeout(_remaining(deadline))
            chunk = response.read1(_CHUNK_BYTES)
            _remaining(deadline)  # an aborted read ends early: it must not pass for the whole body
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
        if received > max_bytes:
            raise InputError(f"{name}: {where} is over the limit of {max_bytes} bytes (url_max_bytes)")
        return None, b"".join(chunks)
    finally:
        watchdog.cancel()
        connection.close()


def _remaining(deadline: float) -> float:
    """Seconds left before ``deadline``; TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _abort(connection: http.client.HTTPConnection) -> None:
    """Unblock whatever the connection waits on (a closed socket would leave a recv blocked)."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to unblock
            sock.shutdown(socket.SHUT_RDWR)


def _checked_address(
    host: str, port: int, where: str, name: str, deadline: float, allow_private: bool
) -> str:
    """The address to connect to: ``host`` resolved within the deadline, every answer checked."""
    future: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()

    def resolve() -> None:
        try:
            future.set_result(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as err:  # handed to the waiting caller
            future.set_exception(err)

    # getaddrinfo has no timeout of its own: it runs aside, waited on for what is left.
    threading.Thread(target=resolve, name="catts-resolve", daemon=True).start()
    try:
        answers = future.result(timeout=_remaining(deadline))
    except socket.gaierror as err:
        raise InputError(f"{name}: cannot resolve the host of {where} ({err})") from None
    addresses = [str(answer[4][0]) for answer in answers]
    if not allow_private:
        for address in addresses:
            kind = _non_public(address)
            if kind is not None:
                raise InputError(
                    f"{name}: {where} resolves to {address}, {'an' if kind[0] in 'aeiou' else 'a'} "
                    f"{kind} address; fetching from it is "
                    "refused (server-side request forgery guard). To fetch from your own network, "
                    "pass --allow-private-urls (allow_private_urls=True, CATTS_ALLOW_PRIVATE_URLS=1)"
                )
    return addresses[0]


def _non_public(address: str) -> str | None:
    """What kind of non-public address ``address`` is ("loopback", ...), or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is not part
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("unspecified", "loopback", "link_local", "private", "multicast", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the address that was checked (the Host header still names the host)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the address that was checked; the certificate is verified for the host's name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def decode_image(
    data: bytes, *, name: str = "image", max_pixels: int = 40_000_000, max_aspect_ratio: float = 200.0
) -> Image.Image:
    """Decode and check image bytes: readable, within ``max_pixels`` and ``max_aspect_ratio``
    (longest over shortest side), converted to RGB. Both limits are read from the header, before any
    pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Our own limit is the guard; PIL's warning threshold would refuse images it allows.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(
                    f"{name}: {width}x{height} = {width * height} pixels is over the limit of "
                    f"{max_pixels} (max_image_pixels)"
                )
            if width >= 1 and height >= 1 and max(width, height) / min(width, height) > max_aspect_ratio:
                raise InputError(
                    f"{name}: {width}x{height} has an aspect ratio of "
                    f"{max(width, height) / min(width, height):g}, over the limit of {max_aspect_ratio:g} "
                    "(max_aspect_ratio); crop or pad it"
                )
            image.load()
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(f"{name}: refused as a decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{name}: not an image PIL can read ({err})") from None
    if width < 1 or height < 1:
        raise InputError(f"{name}: image has no pixels ({width}x{height})")
    return image.convert("RGB")


def load_image(
    reference: str,
    *,
    name: str = "image",
    allow_url: bool = False,
    url_max_bytes: int = 20_000_000,
    url_timeout: float = 10.0,
    max_pixels: int = 40_000_000,
    max_bytes: int = 100_000_000,
    max_aspect_ratio: float = 200.0,
    allow_private: bool = False,
) -> Image.Image:
    """Read and decode one reference into a checked RGB image (limits as in :func:`read_reference`
    and :func:`decode_image`)."""
    data = read_reference(
        reference,
        name=name,
        allow_url=allow_url,
        url_max_bytes=url_max_bytes,
        url_timeout=url_timeout,
        max_bytes=max_bytes,
        allow_private=allow_private,
    )
    return decode_image(data, name=name, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)


def to_base64_png(image: Image.Image) -> str:
    """PNG bytes of ``image`` in base64, for LangChain image content blocks.

    An image :data:`IMAGE_CACHE` holds is encoded once while it holds it: the Voter, the Critic,
    the Planner and a chat-API base model are all shown the same decoded image of a run.
    """
    return IMAGE_CACHE.base64_png(image)


def _encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- decoded images of a run -------------------------------------------------------------------


class ImageCache:
    """Decoded images keyed by their content, bounded in bytes of pixels, least recently used out.

    Several nodes of a run need the same pixels, and an evaluation asks about the same image again.
    The key is the SHA-256 of the image's bytes (with the limits it was checked against), never its
    path: a new picture saved at the same path is a new entry, not the old pixels. The bytes are
    read again on every lookup (a file, a data URI); only the decoding is saved. Safe to share
    between threads; a decoded image is shared too, so callers must not modify it.

    A held image's PNG encoding (:meth:`base64_png`) is kept with it and dropped with it, counted
    in the same budget.
    """

    def __init__(self) -> None:
        self._images: OrderedDict[tuple[str, int, float], Image.Image] = OrderedDict()
        self._keys: dict[int, tuple[str, int, float]] = {}
        """The key of each held image, by the image's id (valid while it is held)."""
        self._png: dict[tuple[str, int, float], str] = {}
        self._bytes = 0
        self._budget = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held now: pixels, and the PNG encodings kept with them."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._images)

    def load(self, data: bytes, *, name: str, config: CATTSConfig) -> Image.Image:
        """``data`` decoded and checked (:func:`~catts_graph.images.decode_image`), from the cache when
        the same bytes were decoded under the same limits; keeps at most ``config.image_cache_bytes``."""
        key = (hashlib.sha256(data).hexdigest(), config.max_image_pixels, config.max_aspect_ratio)
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
                return image
        image = decode_image(
            data, name=name, max_pixels=config.max_image_pixels, max_aspect_ratio=config.max_aspect_ratio
        )
        with self._lock:
            budget = self._budget = config.image_cache_bytes
            size = _pixel_bytes(image)
            if size <= budget and key not in self._images:
                self._images[key] = image
                self._keys[id(image)] = key
                self._bytes += size
            while self._bytes > budget:
                dropped_key, dropped = self._images.popitem(last=False)
                del self._keys[id(dropped)]
                self._bytes -= _pixel_bytes(dropped) + len(self._png.pop(dropped_key, ""))
        return image

    def base64_png(self, image: Image.Image) -> str:
        """The PNG of ``image`` in base64, encoded once while the cache holds ``image`` (the very
        object :meth:`load` returned; any other image is encoded on every call). The encoding is
        kept only while it fits the budget of the last :meth:`load`, next to the pixels."""
        with self._lock:
            key = self._keys.get(id(image))
            held = key is not None and self._images[key] is image
            if held and key in self._png:
                return self._png[key]
        encoded = _encode_png(image)
        with self._lock:
            # Still held, not encoded meanwhile by another thread, and within the budget.
            if (
                held
                and self._images.get(key) is image
                and key not in self._png
                and self._bytes + len(encoded) <= self._budget
            ):
                self._png[key] = encoded
                self._bytes += len(encoded)
        return encoded


def _pixel_bytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


IMAGE_CACHE = ImageCache()
"""The decoded images of this process, shared by every graph and run in it."""


def read_image(reference: str, *, name: str, config: CATTSConfig) -> bytes:
    """The bytes behind one reference, within the limits of ``config``."""
    return read_reference(
        reference,
        name=name,
        allow_url=config.allow_url_fetch,
        url_max_bytes=config.url_max_bytes,
        url_timeout=config.url_timeout,
        max_bytes=config.max_image_bytes,
        allow_private=config.allow_private_urls,
    )


def image_name(index: int, count: int) -> str:
    """How errors name image ``index`` of ``count``: ``image``, or ``images[i]`` when there are several."""
    return "image" if count == 1 else f"images[{index}]"


def load_images(references: Sequence[str], config: CATTSConfig) -> list[Image.Image]:
    """Decode the run's image references (through :data:`IMAGE_CACHE`)."""
    names = [image_name(i, len(references)) for i in range(len(references))]
    return [
        IMAGE_CACHE.load(read_image(ref, name=name, config=config), name=name, config=config)
        for ref, name in zip(references, names, strict=True)
    ]
