"""Label Studio's brush RLE: the bit-packed run-length format of ``BrushLabels`` results.

The format (thi.ng ``rle-pack``, as used by the Label Studio frontend and
``label_studio_converter.brush``) encodes a flat uint8 array; a brush mask of ``H x W`` pixels
is stored as RGBA, ``H * W * 4`` values, and readers take the alpha channel. Bit layout, most
significant bit first:

- header: 32 bits value count, 5 bits ``word_size - 1``, four times 4 bits ``rle_size - 1``;
- then blocks: 1 flag bit, 2 bits choosing one of the four run-length widths, the run length
  minus one in that many bits, then either one value (flag 1: a run of equal values) or that
  many values (flag 0: literals), each ``word_size`` bits.

The encoder here writes what ``label_studio_converter.brush.encode_rle`` writes (runs only,
widths 3/4/8/16, word size 8, the same zero padding), vectorised with numpy so a large mask
encodes in milliseconds; the decoder reads any valid stream.
"""

from __future__ import annotations

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
_MAX_RUN = 1 << RLE_SIZES[-1]


class BrushRleError(ValueError):
    """The RLE stream is malformed or does not match the stated size."""


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and values of a 1-D array."""
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    return (ends - starts).astype(np.int64), flat[starts]


def _pack(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate the low ``widths[i]`` bits of ``codes[i]`` (MSB first) -> uint8 bit array."""
    total = int(widths.sum())
    token = np.repeat(np.arange(codes.size), widths)
    first = np.repeat(np.cumsum(widths) - widths, widths)
    shift = widths[token] - 1 - (np.arange(total) - first)
    return ((codes[token] >> shift.astype(np.uint64)) & np.uint64(1)).astype(np.uint8)


def encode_rle(values: np.ndarray) -> list[int]:
    """A flat uint8 array -> brush RLE bytes (as a list of ints, like Label Studio's JSON)."""
    flat = np.ascontiguousarray(values, dtype=np.uint8).ravel()
    return _encode_runs(*_runs(flat), flat.size)


def _encode_runs(lengths: np.ndarray, run_values: np.ndarray, count: int) -> list[int]:
    if count >= 1 << 32:
        raise BrushRleError(f"{count} values do not fit the 32-bit RLE header")
    # Runs longer than the widest length field are split into full chunks plus a remainder.
    chunks = np.maximum(1, -(-lengths // _MAX_RUN))
    run_of = np.repeat(np.arange(lengths.size), chunks)
    first_chunk = np.repeat(np.cumsum(chunks) - chunks, chunks)
    is_last = (np.arange(run_of.size) - first_chunk) == chunks[run_of] - 1
    length = np.where(is_last, lengths[run_of] - (chunks[run_of] - 1) * _MAX_RUN, _MAX_RUN)
    value = run_values[run_of].astype(np.uint64)
    size_index = np.searchsorted(np.array([1 << s for s in RLE_SIZES]), length)
    size_bits = np.asarray(RLE_SIZES)[size_index]
    single = length == 1  # written as one literal: flag 0, width index 0, count 0
    flag = np.where(single, 0, 1).astype(np.uint64)
    size_index = np.where(single, 0, size_index)
    size_bits = np.where(single, RLE_SIZES[0], size_bits)
    count_field = (length - 1).astype(np.uint64)
    widths = (1 + 2 + size_bits + WORD_SIZE).astype(np.int64)
    codes = (
        (flag << ((2 + size_bits + WORD_SIZE).astype(np.uint64)))
        | (size_index.astype(np.uint64) << (size_bits + WORD_SIZE).astype(np.uint64))
        | (count_field << np.uint64(WORD_SIZE))
        | value
    )
    header_codes = np.array([count, WORD_SIZE - 1, *(s - 1 for s in RLE_SIZES)], dtype=np.uint64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    bits = _pack(np.concatenate((header_codes, codes)), np.concatenate((header_widths, widths)))
    # Label Studio's encoder always pads with 1..8 zero bits (a whole zero byte when the
    # stream is already byte-aligned); doing the same keeps the bytes identical to theirs.
    pad = 8 - bits.size % 8
    bits = np.concatenate((bits, np.zeros(pad, np.uint8)))
    return [int(b) for b in np.packbits(bits)]


def decode_rle(rle: list[int] | bytes) -> np.ndarray:
    """Brush RLE bytes -> the flat uint8 array they encode."""
    if not isinstance(rle, list | bytes | bytearray):  # bytes(10**12) would allocate a terabyte
        raise BrushRleError("rle must be a list of integers 0..255")
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise BrushRleError("rle must be a list of integers 0..255") from None
    bits = "".join(f"{b:08b}" for b in data) if len(data) < 4096 else _bitstring(data)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise BrushRleError("the RLE stream ends early")
        out = int(bits[pos : pos + n], 2) if n else 0
        pos += n
        return out

    count = read(32)
    word_size = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if word_size > 8:
        raise BrushRleError(f"word size {word_size} is not supported (uint8 masks only)")
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        is_run = read(1)
        j = i + 1 + read(sizes[read(2)])
        if j > count:
            raise BrushRleError(f"a run passes the stated size of {count} values")
        if is_run:
            out[i:j] = read(word_size)
        else:
            for k in range(i, j):
                out[k] = read(word_size)
        i = j
    return out


def _bitstring(data: bytes) -> str:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    return (bits + ord("0")).astype(np.uint8).tobytes().decode("ascii")


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A binary or 0..255 mask ``[H, W]`` -> brush RLE of its RGBA image (all four channels
    equal to the mask value, as ``label_studio_converter.brush.mask2rle`` does)."""
    if mask.ndim != 2:
        raise BrushRleError(f"a brush mask is 2-D [H, W], got shape {mask.shape}")
    lengths, values = _runs(np.ascontiguousarray(mask, dtype=np.uint8).ravel())
    # Repeating every pixel 4 times multiplies each run's length by 4: no 4x array needed.
    return _encode_runs(lengths * 4, values, mask.size * 4)


def rle_to_mask(rle: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """Brush RLE -> the alpha channel ``[H, W]`` (uint8; painted pixels are non-zero)."""
    flat = decode_rle(rle)
    if flat.size != height * width * 4:
        raise BrushRleError(
            f"the RLE holds {flat.size} values but a {width}x{height} RGBA image needs "
            f"{height * width * 4}"
        )
    return flat.reshape(height, width, 4)[:, :, 3]
