"""JPEG/PNG frames: one documented rule per image mode, EXIF orientation, MPO, truncated files and the
frame-side limit, checked pixel by pixel in process and embedding by embedding over a real server."""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from conftest import ServerThread, reference_embeddings
from PIL import Image, ImageFile

from vidlstm.clients import EncoderClient
from vidlstm.models import FrameError, InferenceModel, PixelFormat, decode_image
from vidlstm.models.images import image_to_rgb
from vidlstm.v1 import encoder_pb2 as pb
from vidlstm.v1 import encoder_pb2_grpc as pb_grpc

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
RNG = np.random.default_rng(7)
GRAY = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
COLOUR = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
ALPHA = np.tile(np.array([0, 1, 128, 255, 0, 77], np.uint8), (4, 1))
# 16-bit samples and their high byte, the one rule for every 16-bit PNG, gray or colour.
SIXTEEN = np.tile(np.array([0, 128, 255, 256, 257 * 100, 33024, 65535], np.uint16), (4, 1))
HIGH_BYTE = np.tile(np.array([0, 0, 0, 1, 100, 129, 255], np.uint8), (4, 1))
PALETTE = np.array([[0, 0, 0], [200, 10, 20], [5, 6, 7]], np.uint8)
INDICES = RNG.integers(0, 3, (4, 6), dtype=np.uint8)
BITS = RNG.integers(0, 2, (4, 6)).astype(bool)
NOISE = RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # too busy for JPEG to shrink much


def _saved(image: Image.Image, image_format: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _filtered(samples: np.ndarray, bit_depth: int, *, interlaced: bool = False) -> bytes:
    """PNG scanlines (filter 0) of [H, W] or [H, W, C] samples, per Adam7 pass when interlaced."""
    dtype = ">u2" if bit_depth == 16 else np.uint8
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    rows = (row for x0, y0, dx, dy in passes for row in samples[y0::dy, x0::dx] if row.size)
    return b"".join(b"\x00" + row.astype(dtype).tobytes() for row in rows)


def _png(
    size: tuple[int, int], bit_depth: int, colour_type: int, stream: bytes, *, interlaced: bool = False
) -> bytes:
    """A PNG written by hand: Pillow writes neither 16-bit colour, interlaced, nor lying PNGs."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", *size, bit_depth, colour_type, 0, 0, int(interlaced))
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(stream)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _palette_image(**info: object) -> bytes:
    image = Image.fromarray(INDICES)
    image.putpalette(PALETTE.tobytes())
    return _saved(image, **info)


def _sixteen_bit_gray_big_endian() -> bytes:
    return _saved(Image.frombytes("I;16B", (7, 4), SIXTEEN.astype(">u2").tobytes()))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: stored turned left, to be rotated 90 degrees clockwise to show
    return exif.tobytes()


def _noisy_jpeg(image_format: str = "JPEG", orientation: int | None = None) -> bytes:
    """NOISE as a JPEG, or as an MPO with a blue second image; with an EXIF `orientation` if given."""
    extra: dict[str, object] = {} if orientation is None else {"exif": _exif(orientation)}
    if image_format == "MPO":
        extra.update(save_all=True, append_images=[Image.new("RGB", (96, 64), (0, 0, 255))])
    return _saved(Image.fromarray(NOISE), image_format, quality=95, **extra)


def _decode(data: bytes, max_side: int = 4096) -> np.ndarray:
    return decode_image(data, max_side=max_side, max_pixels=16_000_000)


# file -> the exact pixels the module docstring's rules promise
PNG_CASES: dict[str, tuple[bytes, np.ndarray]] = {
    "L": (_saved(Image.fromarray(GRAY)), _rgb(GRAY)),
    "L with transparency dropped": (_saved(Image.fromarray(GRAY), transparency=int(GRAY[0, 0])), _rgb(GRAY)),
    "LA alpha dropped": (_saved(Image.fromarray(np.stack([GRAY, ALPHA], axis=2))), _rgb(GRAY)),
    "RGB": (_saved(Image.fromarray(COLOUR)), COLOUR),
    "RGBA alpha dropped": (_saved(Image.fromarray(np.dstack([COLOUR, ALPHA]))), COLOUR),
    "P": (_palette_image(), PALETTE[INDICES]),
    "P with transparency dropped": (_palette_image(transparency=b"\xff\x00\x80"), PALETTE[INDICES]),
    "1 bilevel": (_saved(Image.fromarray(BITS)), _rgb(BITS.astype(np.uint8) * 255)),
    "I;16 gray": (_saved(Image.fromarray(SIXTEEN)), _rgb(HIGH_BYTE)),
    "I;16B gray": (_sixteen_bit_gray_big_endian(), _rgb(HIGH_BYTE)),
    "interlaced L": (_png((6, 4), 8, 0, _filtered(GRAY, 8, interlaced=True), interlaced=True), _rgb(GRAY)),
    # Pillow itself keeps the high byte of 16-bit colour samples
    "48-bit RGB": (
        _png((7, 4), 16, 2, _filtered(np.dstack([SIXTEEN, SIXTEEN[:, ::-1], SIXTEEN]), 16)),
        np.dstack([HIGH_BYTE, HIGH_BYTE[:, ::-1], HIGH_BYTE]),
    ),
    "64-bit RGBA alpha dropped": (
        _png((7, 4), 16, 6, _filtered(np.dstack([SIXTEEN, SIXTEEN, SIXTEEN[:, ::-1], SIXTEEN]), 16)),
        np.dstack([HIGH_BYTE, HIGH_BYTE, HIGH_BYTE[:, ::-1]]),
    ),
    "32-bit gray + alpha dropped": (
        _png((7, 4), 16, 4, _filtered(np.dstack([SIXTEEN, SIXTEEN[:, ::-1]]), 16)),
        _rgb(HIGH_BYTE),
    ),
}


@pytest.fixture(scope="module")
def stub(server: ServerThread):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.EncoderStub(channel)


def _refusal(stub: pb_grpc.EncoderStub, images: list[bytes]) -> grpc.RpcError:
    frames = pb.Frames(encoded=pb.EncodedFrames(images=images))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Encode(pb.EncodeRequest(sequences=[pb.Sequence(frames=frames)]), timeout=10)
    return raised.value


def _assert_served_as(server: ServerThread, model: InferenceModel, data: bytes, pixels: np.ndarray) -> None:
    with EncoderClient(server.address) as client:
        served = client.encode([data]).embeddings
    expected = reference_embeddings(model, pixels[None], PixelFormat.RGB)
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", list(PNG_CASES))
def test_png_modes_decode_to_the_documented_pixels(case: str) -> None:
    data, expected = PNG_CASES[case]
    np.testing.assert_array_equal(_decode(data), expected)


@pytest.mark.parametrize("case", list(PNG_CASES))
def test_served_png_modes_embed_as_their_documented_pixels(server, model, case: str) -> None:
    data, expected = PNG_CASES[case]
    _assert_served_as(server, model, data, expected)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_sixteen_bit_gray_keeps_the_high_byte(mode: str) -> None:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    image = Image.frombytes(mode, (7, 4), SIXTEEN.astype(dtype).tobytes())
    np.testing.assert_array_equal(image_to_rgb(image), _rgb(HIGH_BYTE))


def test_32_bit_int_gray_is_read_as_16_bit_samples() -> None:
    """Mode I is how older Pillow opens 16-bit gray PNGs; values outside 16 bits are clipped."""
    image = Image.fromarray(np.array([[-5, 0, 129, 257 * 100, 65535, 70000]], np.int32))
    np.testing.assert_array_equal(image_to_rgb(image), _rgb(np.array([[0, 0, 0, 100, 255, 255]], np.uint8)))


def test_ycbcr_converts_to_rgb() -> None:
    image = Image.fromarray(COLOUR).convert("YCbCr")
    np.testing.assert_allclose(image_to_rgb(image), COLOUR, atol=3)


def test_cmyk_jpeg_decodes_to_its_colour() -> None:
    red = _saved(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    np.testing.assert_allclose(_decode(red), np.full((16, 16, 3), (255, 0, 0)), atol=3)


def test_unsupported_mode_is_refused() -> None:
    with pytest.raises(FrameError, match="image mode F is not supported; send an 8- or 16-bit JPEG or PNG"):
        image_to_rgb(Image.new("F", (2, 2)))


def test_mpo_decodes_as_its_first_image() -> None:
    mpo = _noisy_jpeg("MPO")
    with Image.open(io.BytesIO(mpo)) as image:
        assert (image.format, image.n_frames) == ("MPO", 2)
    np.testing.assert_array_equal(_decode(mpo), _decode(_noisy_jpeg()))


@pytest.mark.parametrize("image_format", ["JPEG", "MPO"])
def test_jpeg_exif_orientation_is_applied(image_format: str) -> None:
    rotated = _decode(_noisy_jpeg(image_format, orientation=6))
    stored = _decode(_noisy_jpeg(image_format))
    assert stored.shape == (64, 96, 3)
    np.testing.assert_array_equal(rotated, np.rot90(stored, k=-1))


def test_png_exif_orientation_is_ignored() -> None:
    np.testing.assert_array_equal(_decode(_saved(Image.fromarray(COLOUR), exif=_exif(6))), COLOUR)


@pytest.mark.parametrize(
    ("marker", "payload"),
    [(b"\xff\xe1", b"Exif\x00\x00"), (b"\xff\xe2", b"MPF\x00")],
    ids=["corrupt EXIF", "malformed MPF"],
)
def test_unreadable_metadata_leaves_the_jpeg_as_stored(marker: bytes, payload: bytes) -> None:
    """Pillow warns and skips it (warnings are errors here, so none may escape)."""
    tiff_claiming_three_tags = b"II*\x00\x08\x00\x00\x00\x03\x00" + bytes(20)
    segment = payload + tiff_claiming_three_tags
    jpeg = _noisy_jpeg()
    spoiled = jpeg[:2] + marker + struct.pack(">H", len(segment) + 2) + segment + jpeg[2:]
    np.testing.assert_array_equal(_decode(spoiled), _decode(jpeg))


@pytest.mark.parametrize("image_format", ["JPEG", "MPO"])
def test_served_jpegs_embed_as_their_first_image_turned_upright(server, model, image_format: str) -> None:
    upright = np.rot90(_decode(_noisy_jpeg()), k=-1)
    _assert_served_as(server, model, _noisy_jpeg(image_format, orientation=6), upright)


def _png_cut(keep: float) -> bytes:
    """The first `keep` of a PNG's bytes (a fraction), or all but its last -`keep` bytes."""
    data = _saved(Image.fromarray(NOISE))
    return data[: int(len(data) * keep) if keep > 0 else int(keep)]


TRUNCATED = {
    "PNG declaring 4000x4000 holding 4 rows": _png((4000, 4000), 8, 0, _filtered(np.full((4, 4000), 200), 8)),
    "interlaced PNG holding half its stream": _png(
        (6, 4), 8, 0, _filtered(GRAY, 8, interlaced=True)[:15], interlaced=True
    ),
    "PNG cut inside its header": _png(GRAY.shape[::-1], 8, 0, _filtered(GRAY, 8))[:20],
    "PNG cut at a third": _png_cut(1 / 3),
    "PNG cut in half": _png_cut(1 / 2),
    "PNG cut before its last 30 bytes": _png_cut(-30),
    "JPEG cut in half": _noisy_jpeg()[: len(_noisy_jpeg()) // 2],
}


@pytest.mark.parametrize("case", list(TRUNCATED))
def test_truncated_images_are_refused(case: str) -> None:
    with pytest.raises(FrameError, match=r"^truncated or corrupt image"):
        _decode(TRUNCATED[case])


def test_short_png_stream_message_says_how_much_is_missing() -> None:
    with pytest.raises(FrameError, match="pixel data ends after 16004 of the 16004000 bytes a 4000x4000 PNG"):
        _decode(TRUNCATED["PNG declaring 4000x4000 holding 4 rows"])


@pytest.mark.parametrize("case", list(TRUNCATED))
def test_served_truncated_images_are_refused_and_serving_goes_on(server, model, stub, case: str) -> None:
    error = _refusal(stub, [PNG_CASES["RGB"][0], TRUNCATED[case]])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("EncodedFrames.images[1]: truncated or corrupt image"), error.details()
    _assert_served_as(server, model, *PNG_CASES["RGB"])


def test_truncated_images_are_never_loaded_leniently(server) -> None:
    """The server (imported and running) leaves Pillow's strict default on."""
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_side_limit_is_checked_before_decoding() -> None:
    header_only = _png((40000, 400), 8, 0, b"")[:41]  # signature, IHDR, IDAT's length and type: no pixels
    with pytest.raises(
        FrameError, match=r"image size 40000x400 \(width x height\) outside 1\.\.4096 per side"
    ):
        _decode(header_only)


@pytest.mark.parametrize(
    ("size", "accepted"), [((32, 8), True), ((8, 32), True), ((33, 8), False), ((8, 33), False)]
)
def test_side_limit_bounds_both_sides(size: tuple[int, int], accepted: bool) -> None:
    data = _saved(Image.new("L", size))
    if accepted:
        assert _decode(data, max_side=32).shape == (size[1], size[0], 3)
    else:
        with pytest.raises(FrameError, match=rf"image size {size[0]}x{size[1]} .* outside 1\.\.32 per side"):
            _decode(data, max_side=32)


def test_served_side_limit_matches_the_raw_frame_limit(stub) -> None:
    wide = _saved(Image.new("L", (40000, 400)))  # 16 Mpixel: within --max-image-pixels
    error = _refusal(stub, [wide])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "EncodedFrames.images[0]: image size 40000x400 (width x height) outside 1..4096 per side; "
        "scale it down"
    )
    raw = pb.Frames(raw=pb.RawFrames(shape=[1, 400, 40000, 1], pixel_format=pb.GRAY))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Encode(pb.EncodeRequest(sequences=[pb.Sequence(frames=raw)]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside 1..4096 per side" in raised.value.details()
