"""Label Studio brush RLE: known bytes, exact round trips, and the reference decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from activeseg.integrations.brush_rle import (
    BrushRleError,
    decode_rle,
    encode_rle,
    mask_to_rle,
    rle_to_mask,
)


def bits_to_bytes(bits: str) -> list[int]:
    bits += "0" * (8 - len(bits) % 8)  # the reference encoder's padding: 1..8 zero bits
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


HEADER_WORD8 = "00111" + "0010" + "0011" + "0111" + "1111"  # word 8, run widths 3/4/8/16


def test_one_painted_pixel_has_the_documented_bytes() -> None:
    # 1x1 mask of 255 -> RGBA 255,255,255,255: a run of 4 (3 bits: 011) of value 255.
    expected = bits_to_bytes(f"{4:032b}" + HEADER_WORD8 + "1" + "00" + "011" + "11111111")
    assert mask_to_rle(np.array([[255]], np.uint8)) == expected


def test_single_values_and_wide_runs_have_the_documented_bytes() -> None:
    values = np.array([7] + [0] * 20, np.uint8)  # a single 7, then a run of 20 (8-bit width)
    expected = bits_to_bytes(
        f"{21:032b}" + HEADER_WORD8 + "0" + "00" + "000" + f"{7:08b}"
        "1" + "10" + f"{19:08b}" + f"{0:08b}"
    )
    assert encode_rle(values) == expected
    assert decode_rle(expected).tolist() == values.tolist()


def test_literal_blocks_written_by_other_encoders_decode() -> None:
    # flag 0 with a count of 3: three literal values 1, 2, 3 (the frontend writes these).
    stream = bits_to_bytes(
        f"{3:032b}" + HEADER_WORD8 + "0" + "00" + "010" + f"{1:08b}{2:08b}{3:08b}"
    )
    assert decode_rle(stream).tolist() == [1, 2, 3]


def test_runs_longer_than_the_widest_field_round_trip() -> None:
    mask = np.zeros((300, 300), np.uint8)  # 360000 RGBA values of 0: several 65536-chunks
    mask[150:, 10:20] = 255
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), 300, 300), mask)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 24), st.integers(1, 24)),
        elements=st.sampled_from([0, 255, 3]),
    )
)
def test_round_trip_is_exact(mask: np.ndarray) -> None:
    rle = mask_to_rle(mask)
    assert np.array_equal(rle_to_mask(rle, *mask.shape), mask)


def test_matches_the_label_studio_converter_bytes_when_installed() -> None:
    try:  # Label Studio >= 1.13 ships the converter inside its SDK
        from label_studio_sdk.converter import brush
    except ImportError:
        brush = pytest.importorskip("label_studio_converter.brush")
    rng = np.random.default_rng(1)
    for _ in range(10):
        mask = (rng.random((17, 23)) < 0.4).astype(np.uint8) * 255
        ours = mask_to_rle(mask)
        assert ours == brush.mask2rle(mask)
        assert np.array_equal(brush.decode_rle(ours).reshape(17, 23, 4)[:, :, 3], mask)


def test_malformed_streams_are_refused() -> None:
    good = mask_to_rle(np.full((4, 4), 255, np.uint8))
    with pytest.raises(BrushRleError, match="ends early"):
        decode_rle(good[:5])
    with pytest.raises(BrushRleError, match="needs"):
        rle_to_mask(good, 5, 5)
    with pytest.raises(BrushRleError):
        decode_rle(["x"])  # type: ignore[list-item]
