"""The size an image file claims in its header, checked against the bytes that are there.

OpenCV allocates the whole decoded image from the header before it reads the pixels (a 91-byte PNG
whose header says 30000 x 30000 costs 2.7 GB and seconds before it fails), and a PNG chunk from its
length field (one claiming 3.5 GB took 3.6 GB and 5 s). No real encoding packs
more than a few thousand pixels into a byte (deflate's limit is about 1000:1 on 8-bit rows, 8000:1
on 1-bit ones), so a header claiming more than PIXELS_PER_BYTE pixels per byte of file is corrupt
and refused before OpenCV sees it. PNG, JPEG and BMP headers are read; other formats are left to
OpenCV's own limit (2^30 pixels).
"""
PIXELS_PER_BYTE = 10_000
_SLACK_PIXELS = 1 << 20          # small files: never refuse what fits in a megapixel
_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: C0-CF but C4 (Huffman tables), C8 (reserved) and CC (arithmetic conditioning)
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = set(range(0xD0, 0xDA)) | {0x01}


def _png_size(data):
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _jpeg_size(data):
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
        elif marker in _NO_LENGTH:
            i += 2
        elif marker in _SOF:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _bmp_size(data):
    if len(data) >= 26:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        return abs(width), abs(height)
    return None


def claimed_size(data):
    """(width, height) from a PNG, JPEG or BMP header, or None (another format, or no header)."""
    data = bytes(data[:1 << 16]) if len(data) > 1 << 16 else bytes(data)
    if data.startswith(_PNG):
        return _png_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"BM"):
        return _bmp_size(data)
    return None


def _png_chunk_overrun(data):
    """A message when a PNG chunk claims more bytes than the file has (OpenCV allocates the claim)."""
    i = len(_PNG)
    while i + 8 <= len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        if i + 12 + length > len(data):
            return f"a {bytes(data[i + 4:i + 8])!r} chunk claims {length} bytes, the file has {len(data) - i - 12} left"
        i += 12 + length
    return None


def implausible_size(data):
    """A message when the header claims more pixels (or a PNG chunk more bytes) than the file's bytes
    can hold, else None."""
    if bytes(data[:8]) == _PNG:
        overrun = _png_chunk_overrun(data)
        if overrun:
            return overrun
    size = claimed_size(data)
    if size is None:
        return None
    width, height = size
    if width * height > PIXELS_PER_BYTE * len(data) + _SLACK_PIXELS:
        return f"its header claims {width}x{height} pixels, more than its {len(data)} bytes can hold"
    return None
