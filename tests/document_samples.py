"""Identity-document samples for tests: JPEG, PNG and PDF files with metadata and a marker.

The marker sits where stripping keeps it (raw pixel bytes inside a stored, i.e.
uncompressed, zlib stream of a PNG's IDAT; the page content of a PDF), so a
test that does not find it in a store proves encryption, not stripping.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

MARKER = b"XHMARKER-7f3a9c-IDSCAN-PIXELS"
"""Bytes that stay in a sample's content after stripping."""

EXIF_SECRET = b"GPS-31.2304N-121.4737E-CAMERA-SN-998877"
"""Bytes placed in metadata (EXIF, text chunks, /Info): must be gone after stripping."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_sample(*, metadata: bool = True, rows: int = 4) -> bytes:
    """A grayscale PNG whose every pixel row is MARKER, stored uncompressed; with text, time
    and eXIf chunks holding EXIF_SECRET when `metadata`."""
    width = len(MARKER)
    raw = b"".join(b"\x00" + MARKER for _ in range(rows))
    ihdr = struct.pack(">IIBBBBB", width, rows, 8, 0, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", ihdr)]
    if metadata:
        parts.append(_png_chunk(b"tEXt", b"Author\x00" + EXIF_SECRET))
        parts.append(_png_chunk(b"tIME", struct.pack(">HBBBBB", 2026, 12, 3, 9, 30, 0)))
        parts.append(_png_chunk(b"eXIf", b"MM\x00*" + EXIF_SECRET))
    parts.append(_png_chunk(b"IDAT", zlib.compress(raw, 0)))
    if metadata:
        parts.append(_png_chunk(b"iTXt", b"Comment\x00\x00\x00\x00\x00" + EXIF_SECRET))
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


def jpeg_sample(*, metadata: bool = True, size: tuple[int, int] = (64, 48)) -> bytes:
    """A real JPEG (noise-free gradient) with an EXIF APP1, an XMP APP1 and a COM segment."""
    image = Image.new("RGB", size)
    image.putdata(
        [((x * 4) % 256, (y * 5) % 256, 128) for y in range(size[1]) for x in range(size[0])]
    )
    out = io.BytesIO()
    if metadata:
        exif = Image.Exif()
        exif[0x010F] = EXIF_SECRET.decode()  # Make
        exif[0x0131] = "Xiaohe-Test-Software"  # Software
        image.save(out, "JPEG", quality=90, exif=exif.tobytes(), comment=EXIF_SECRET)
    else:
        image.save(out, "JPEG", quality=90)
    data = out.getvalue()
    if metadata:
        xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>" + EXIF_SECRET + b"</x:xmpmeta>"
        segment = b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp
        data = data[:2] + segment + data[2:]
    return data


def pdf_sample(*, metadata: bool = True) -> bytes:
    """A one-page PDF with MARKER in its page content, and /Info and XMP holding EXIF_SECRET."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=200, height=200)
    content = DecodedStreamObject()
    content.set_data(b"BT /F1 12 Tf 10 10 Td (" + MARKER + b") Tj ET")
    page[NameObject("/Contents")] = writer._add_object(content)
    if metadata:
        writer.add_metadata({"/Author": EXIF_SECRET.decode(), "/Producer": "Scanner 3000"})
        xmp = DecodedStreamObject()
        xmp.set_data(b"<x:xmpmeta>" + EXIF_SECRET + b"</x:xmpmeta>")
        xmp[NameObject("/Type")] = NameObject("/Metadata")
        xmp[NameObject("/Subtype")] = NameObject("/XML")
        writer._root_object[NameObject("/Metadata")] = writer._add_object(xmp)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
