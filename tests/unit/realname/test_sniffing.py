"""Documents are typed by their bytes, parsed in full and stripped of metadata (D1)."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from tests.document_samples import EXIF_SECRET, MARKER, jpeg_sample, pdf_sample, png_sample
from xiaohe.identity.server.errors import InvalidArgument
from xiaohe.identity.server.realname.sniffing import (
    JPEG,
    PDF,
    PNG,
    sniff_and_strip,
    strip_jpeg,
)


def _jpeg_markers(data: bytes) -> list[int]:
    """The markers of the segments before the first scan."""
    markers, pos = [], 2
    while True:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        markers.append(marker)
        pos += 2 + length
        if marker == 0xDA:
            return markers


def test_a_jpeg_loses_exif_xmp_and_comments_but_keeps_its_pixels() -> None:
    """D1: EXIF and XMP (APP1) and COM segments are stripped; the decoded image is unchanged."""
    original = jpeg_sample()
    assert EXIF_SECRET in original
    assert 0xE1 in _jpeg_markers(original)
    assert 0xFE in _jpeg_markers(original)
    result = sniff_and_strip(original, "scan.JPG")
    assert result.content_type == JPEG
    assert EXIF_SECRET not in result.content
    assert b"Xiaohe-Test-Software" not in result.content
    markers = _jpeg_markers(result.content)
    assert not any(0xE1 <= m <= 0xED or m == 0xFE or m == 0xEF for m in markers)
    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(result.content)) as b:
        assert a.tobytes() == b.tobytes()
        assert not b.getexif()


def test_a_progressive_jpeg_loses_segments_between_its_scans() -> None:
    """D1: APPn and COM segments placed between the scans of a progressive JPEG are
    stripped too; the decoded image is unchanged."""
    image = Image.new("RGB", (64, 48))
    image.putdata([((x * 4) % 256, (y * 5) % 256, 128) for y in range(48) for x in range(64)])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, progressive=True)
    plain = out.getvalue()
    second_scan = plain.index(b"\xff\xda", plain.index(b"\xff\xda") + 2)
    app1 = b"Exif\x00\x00" + EXIF_SECRET
    com = b"CAMERA-SN-42"
    hidden = (
        b"\xff\xe1"
        + struct.pack(">H", len(app1) + 2)
        + app1
        + b"\xff\xfe"
        + struct.pack(">H", len(com) + 2)
        + com
    )
    original = plain[:second_scan] + hidden + plain[second_scan:]
    stripped = strip_jpeg(original)
    assert EXIF_SECRET not in stripped
    assert com not in stripped
    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(stripped)) as b:
        assert a.tobytes() == b.tobytes()


def test_a_png_loses_text_time_and_exif_chunks_but_keeps_its_pixel_bytes() -> None:
    """D1: tEXt, iTXt, tIME and eXIf chunks are stripped; IDAT (with the marker) is kept."""
    original = png_sample()
    result = sniff_and_strip(original, "scan.png")
    assert result.content_type == PNG
    assert EXIF_SECRET not in result.content
    for chunk in (b"tEXt", b"iTXt", b"tIME", b"eXIf"):
        assert chunk in original
        assert chunk not in result.content
    assert MARKER in result.content
    with Image.open(io.BytesIO(result.content)) as image:
        assert image.tobytes()[: len(MARKER)] == MARKER


def test_a_pdf_loses_its_info_dictionary_and_xmp() -> None:
    """D1: a PDF's /Info (author, producer) and XMP /Metadata are removed; pages stay."""
    original = pdf_sample()
    assert EXIF_SECRET in original
    assert b"Scanner 3000" in original
    result = sniff_and_strip(original, "licence.pdf")
    assert result.content_type == PDF
    assert EXIF_SECRET not in result.content
    assert b"Scanner 3000" not in result.content
    assert b"/Metadata" not in result.content
    assert MARKER in result.content


def test_the_name_never_decides_the_type() -> None:
    """D1: the type is sniffed; a name without an extension is fine, a contradicting one is not."""
    assert sniff_and_strip(png_sample(), "scan").content_type == PNG
    assert sniff_and_strip(jpeg_sample(), "photo.jpeg").content_type == JPEG
    with pytest.raises(InvalidArgument) as refused:
        sniff_and_strip(png_sample(), "licence.pdf")
    assert refused.value.violations[0].field == "header.file_name"
    assert "image/png" in refused.value.violations[0].description
    with pytest.raises(InvalidArgument):
        sniff_and_strip(pdf_sample(), "scan.png")


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is a plain text file\n" * 10,
        b"",
        b"GIF89a" + b"\x00" * 100,
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
    ids=["text", "empty", "gif", "svg"],
)
def test_other_types_are_refused(content: bytes) -> None:
    """D1: only JPEG, PNG and PDF are accepted; a text file is refused as `chunk`."""
    with pytest.raises(InvalidArgument) as refused:
        sniff_and_strip(content, "scan.txt")
    assert refused.value.violations[0].field == "chunk"


@pytest.mark.parametrize(
    ("sample", "name"),
    [(png_sample, "a.png"), (jpeg_sample, "a.jpg"), (pdf_sample, "a.pdf")],
    ids=["png", "jpeg", "pdf"],
)
def test_a_truncated_document_is_refused(sample: object, name: str) -> None:
    """D1: a document cut short (magic number right, rest missing) fails the real parse."""
    data = sample()  # type: ignore[operator]
    for cut in (len(data) // 2, len(data) - 20):
        with pytest.raises(InvalidArgument) as refused:
            sniff_and_strip(data[:cut], name)
        assert refused.value.violations[0].field == "chunk"


def test_a_png_with_a_corrupt_chunk_is_refused() -> None:
    """D1: a chunk whose CRC does not match is refused, not silently dropped."""
    data = bytearray(png_sample(metadata=False))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(InvalidArgument):
        sniff_and_strip(bytes(data), "a.png")


def test_a_jpeg_with_only_a_magic_number_is_refused() -> None:
    """D1: three magic bytes and garbage are not a JPEG."""
    with pytest.raises(InvalidArgument):
        sniff_and_strip(b"\xff\xd8\xff" + b"\x00" * 200, "a.jpg")
    with pytest.raises(InvalidArgument):
        strip_jpeg(b"\xff\xd8\xff\xe0\x00")


def test_a_decompression_bomb_is_refused() -> None:
    """D1: an image claiming far more pixels than a scan needs is refused before decoding."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(InvalidArgument):
        sniff_and_strip(data, "bomb.png")
