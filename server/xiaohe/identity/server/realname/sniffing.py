"""What an uploaded document really is, and the same document without its metadata.

The type comes from the bytes, never from the name or a client's word: a JPEG
starts with SOI (FF D8 FF), a PNG with its 8-byte signature, a PDF with `%PDF-`.
A magic number alone is three bytes an attacker chooses, so each candidate is
also *parsed*: images are decoded in full by Pillow (a truncated scan or IDAT
stream fails), PDFs are opened by pypdf and must have at least one page. A name
whose extension says another type (a PNG named `.pdf`) is refused as a
mismatch, so a reviewer never opens a file as something it is not.

Metadata is stripped at the segment level rather than by re-encoding, which
would lose quality on a scan a reviewer must read and would change every pixel:

- JPEG: every APPn segment except APP0 (JFIF) and APP14 (Adobe, which tells a
  decoder how to convert CMYK/YCCK colours) is dropped, and so is every COM
  segment. EXIF (APP1, with GPS position, camera serial, time), XMP (APP1),
  ICC profiles (APP2, which may name the device), Photoshop IRB (APP13) go.
  The entropy-coded scan data and the tables decoding needs stay byte for byte.
- PNG: only the chunks needed to render the image are kept (IHDR, PLTE, IDAT,
  IEND, tRNS, gAMA, cHRM, sRGB, sBIT, bKGD, pHYs); text (tEXt, zTXt, iTXt),
  time (tIME), eXIf, ICC profiles (iCCP) and any private chunk are dropped.
  Every kept chunk's CRC is checked.
- PDF: the document information dictionary (/Info: author, producer, dates)
  and the XMP stream of the catalogue (/Metadata) are removed by rewriting the
  document with pypdf.

The stripped result is parsed again, so what is stored is known to decode.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Final

from PIL import Image, UnidentifiedImageError

from xiaohe.identity.server.errors import FieldViolation, InvalidArgument

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
PDF: Final = "application/pdf"

_EXTENSIONS: Final = {
    ".jpg": JPEG,
    ".jpeg": JPEG,
    ".jpe": JPEG,
    ".png": PNG,
    ".pdf": PDF,
}

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_KEPT: Final = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD"}
    | {b"pHYs"}
)
# JPEG markers without a length field: SOI, EOI, RSTn, TEM.
_JPEG_STANDALONE: Final = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})
_JPEG_KEPT_APP: Final = frozenset({0xE0, 0xEE})  # APP0 (JFIF), APP14 (Adobe)
_MAX_PIXELS: Final = 50_000_000
"""More pixels than any scan needs: refuses decompression bombs before decoding."""

FILE_NAME_FIELD: Final = "header.file_name"
CONTENT_FIELD: Final = "chunk"


@dataclass(frozen=True)
class Sniffed:
    """A document's real type and its bytes with metadata stripped."""

    content_type: str
    content: bytes


def _refuse(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(FieldViolation(field, description))


def content_type_of_name(file_name: str) -> str | None:
    """The type a file name's extension claims, or None when it claims none we know."""
    dot = file_name.rfind(".")
    if dot < 0:
        return None
    return _EXTENSIONS.get(file_name[dot:].lower())


def sniff_type(content: bytes) -> str | None:
    """The type the leading bytes announce (JPEG, PNG, PDF), or None."""
    if content.startswith(b"\xff\xd8\xff"):
        return JPEG
    if content.startswith(_PNG_SIGNATURE):
        return PNG
    if content.startswith(b"%PDF-"):
        return PDF
    return None


def sniff_and_strip(content: bytes, file_name: str) -> Sniffed:
    """The document's type (from its bytes) and its content without metadata.

    Raises InvalidArgument with a field violation for an unknown type (a text
    file), a name whose extension claims another type, or bytes that do not
    parse (truncated, corrupt). Messages never quote the content.
    """
    content_type = sniff_type(content)
    if content_type is None:
        raise _refuse(CONTENT_FIELD, "is not a JPEG, PNG or PDF document")
    claimed = content_type_of_name(file_name)
    if claimed is not None and claimed != content_type:
        raise _refuse(FILE_NAME_FIELD, f"names a {claimed} file but the content is {content_type}")
    if content_type == JPEG:
        stripped = strip_jpeg(content)
        _decode_image(stripped, "JPEG")
    elif content_type == PNG:
        stripped = strip_png(content)
        _decode_image(stripped, "PNG")
    else:
        stripped = strip_pdf(content)
    return Sniffed(content_type=content_type, content=stripped)


# -- JPEG ------------------------------------------------------------------------


def strip_jpeg(content: bytes) -> bytes:
    """The JPEG without APPn (except APP0, APP14) and COM segments; raises if malformed.

    Walks the marker segments; after each SOS (start of scan) the entropy-coded
    data is copied up to the next marker, and the walk goes on, so the segments
    between the scans of a progressive JPEG are stripped too. The bytes after EOI
    are dropped (some cameras append data there).
    """
    out = bytearray(content[:2])
    pos = 2
    n = len(content)
    while True:
        if pos + 2 > n or content[pos] != 0xFF:
            raise _refuse(CONTENT_FIELD, "is not a complete JPEG image")
        marker = content[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            if marker == 0xD9:
                raise _refuse(CONTENT_FIELD, "is not a complete JPEG image")
            out += content[pos : pos + 2]
            pos += 2
            continue
        if pos + 4 > n:
            raise _refuse(CONTENT_FIELD, "is not a complete JPEG image")
        (length,) = struct.unpack(">H", content[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > n:
            raise _refuse(CONTENT_FIELD, "is not a complete JPEG image")
        is_app = 0xE0 <= marker <= 0xEF
        if (not is_app or marker in _JPEG_KEPT_APP) and marker != 0xFE:
            out += content[pos:end]
        pos = end
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker
            scan_end = _end_of_scan(content, pos)
            out += content[pos:scan_end]
            pos = scan_end
            if content[pos + 1] == 0xD9:  # EOI
                out += b"\xff\xd9"
                return bytes(out)


def _end_of_scan(content: bytes, pos: int) -> int:
    """Where the marker after entropy-coded data starts (stuffed 0xFF00, restart markers
    and fill bytes belong to the data); raises when the file ends first."""
    n = len(content)
    while True:
        i = content.find(b"\xff", pos)
        if i < 0:
            raise _refuse(CONTENT_FIELD, "is not a complete JPEG image")
        j = i + 1
        while j < n and content[j] == 0xFF:
            j += 1
        if j >= n:
            raise _refuse(CONTENT_FIELD, "is not a complete JPEG image")
        if content[j] == 0x00 or 0xD0 <= content[j] <= 0xD7:
            pos = j + 1
            continue
        return j - 1


# -- PNG -------------------------------------------------------------------------


def strip_png(content: bytes) -> bytes:
    """The PNG with only the chunks rendering needs; raises if a chunk is malformed."""
    out = bytearray(_PNG_SIGNATURE)
    pos = len(_PNG_SIGNATURE)
    n = len(content)
    seen_end = False
    while pos < n and not seen_end:
        if pos + 12 > n:
            raise _refuse(CONTENT_FIELD, "is not a complete PNG image")
        (length,) = struct.unpack(">I", content[pos : pos + 4])
        kind = content[pos + 4 : pos + 8]
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > n:
            raise _refuse(CONTENT_FIELD, "is not a complete PNG image")
        data = content[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", content[pos + 8 + length : end])
        if zlib.crc32(kind + data) != crc:
            raise _refuse(CONTENT_FIELD, "is not a valid PNG image (a chunk is corrupt)")
        if kind in _PNG_KEPT:
            out += content[pos:end]
        seen_end = kind == b"IEND"
        pos = end
    if not seen_end:
        raise _refuse(CONTENT_FIELD, "is not a complete PNG image")
    return bytes(out)


# -- decoding --------------------------------------------------------------------


def _decode_image(content: bytes, expected: str) -> None:
    """Decode every pixel; raises InvalidArgument when the image does not decode in full."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=[expected]) as image:
                width, height = image.size
                if width * height > _MAX_PIXELS:
                    raise _refuse(CONTENT_FIELD, "has more pixels than a document scan needs")
                image.load()
    except InvalidArgument:
        raise
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Warning, Exception):
        raise _refuse(CONTENT_FIELD, f"is not a complete {expected} image") from None


# -- PDF -------------------------------------------------------------------------


def strip_pdf(content: bytes) -> bytes:
    """The PDF rewritten without its /Info dictionary and XMP /Metadata; raises if unreadable."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import NameObject

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(io.BytesIO(content), strict=True)
            if reader.is_encrypted:
                raise _refuse(CONTENT_FIELD, "is an encrypted PDF; upload it without a password")
            if len(reader.pages) < 1:
                raise _refuse(CONTENT_FIELD, "is a PDF without pages")
            writer = PdfWriter(clone_from=reader)
            writer._info = None  # no /Info in the trailer at all
            root = writer._root_object
            if NameObject("/Metadata") in root:
                del root[NameObject("/Metadata")]
            # Unreferenced objects (the XMP stream just unlinked) would still be written.
            writer.compress_identical_objects(remove_duplicates=False, remove_unreferenced=True)
            out = io.BytesIO()
            writer.write(out)
            stripped = out.getvalue()
            check = PdfReader(io.BytesIO(stripped), strict=True)
            if len(check.pages) != len(reader.pages):
                raise _refuse(CONTENT_FIELD, "is not a readable PDF document")
    except InvalidArgument:
        raise
    except Exception:
        raise _refuse(CONTENT_FIELD, "is not a readable PDF document") from None
    return stripped
