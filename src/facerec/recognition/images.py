"""Turn untrusted upload bytes into an RGB PIL image, or a typed rejection (never a crash or a hang)."""

from __future__ import annotations

import io
import logging
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

NOT_AN_IMAGE = "not_an_image"
IMAGE_TOO_LARGE = "image_too_large"

# Formats Pillow decodes in-process without external programs (EPS would run Ghostscript).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
# Smaller than MTCNN's smallest detectable face plus context: nothing useful can be in it.
MIN_SIDE = 16

# Register every plugin now: `Image.open(formats=...)` only knows the lazily loaded ones otherwise.
Image.init()


class ImageDecodeError(Exception):
    """The input is not a usable image; `code` matches `ImageRejected.code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_image(data: bytes | Image.Image, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """Decode `data` into an upright RGB image. Raises ImageDecodeError.

    The pixel count is checked from the header before any pixel is decoded, so a small file claiming
    30000x30000 pixels costs nothing. With `max_side`, a JPEG whose long side is more than twice it is decoded
    at 1/2, 1/4 or 1/8 of its size (the DCT's own scaling, Pillow's `draft`), never below `max_side`: a 40 Mpx
    photo then costs ~2 Mpx of memory and a fraction of the time (see `decoded_scale` for the factor).
    """
    if isinstance(data, Image.Image):
        _check_dimensions(data.size, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(data))
    if not data:
        raise ImageDecodeError(NOT_AN_IMAGE, "empty file")
    # Pillow's own guard raises at twice its process-wide limit, before our check: raise that limit to ours when
    # ours is higher (else photos our setting allows would be refused), never lower it (that would make every
    # other image opened in this process, by anyone, subject to our setting). Our check below, from the header,
    # answers with a typed error.
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            _check_dimensions(image.size, max_pixels)
            header_size = image.size
            if max_side is not None:
                _draft(image, max_side)
            image.load()
            if image.size != header_size:
                image.info[DECODED_SCALE] = header_size[0] / image.size[0]
            upright = ImageOps.exif_transpose(image)
            return _to_rgb(upright)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's guard fires first beyond twice our limit; its message holds the pixel count (not the size).
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{found.group(1)} pixels" if found else "too many pixels"
        raise ImageDecodeError(IMAGE_TOO_LARGE, _over_the_limit(pixels, max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(NOT_AN_IMAGE, "not a supported image format") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        # Truncated or corrupt data surfaces as any of these depending on the codec.
        raise ImageDecodeError(NOT_AN_IMAGE, f"cannot decode image: {exc}") from exc


DECODED_SCALE = "facerec_decoded_scale"
"""`info` key of an image decoded at reduced size: original pixels per decoded pixel."""


def decoded_scale(image: Image.Image) -> float:
    """Original pixels per pixel of `image` (1.0 unless `decode_image` reduced it); survives exif_transpose
    and mode conversion, which copy `info`."""
    return float(image.info.get(DECODED_SCALE, 1.0))


def decoded_pixels(data: bytes | Image.Image, max_side: int | None) -> int:
    """Pixels `decode_image(data, ..., max_side)` will hold, from the header alone (0 if it cannot be read:
    decoding will reject it)."""
    if isinstance(data, Image.Image):
        return data.width * data.height
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            if max_side is not None:
                _draft(image, max_side)
            return int(image.width * image.height)
    except Exception:  # any unreadable header: decode_image answers it with the typed error
        return 0


def _draft(image: Image.Image, max_side: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale keeping the long side >= max_side (other formats: no-op)."""
    if image.format != "JPEG" or max(image.size) <= max_side:
        return
    factor = max(image.size) / max_side
    requested = (max(1, int(image.width / factor)), max(1, int(image.height / factor)))
    image.draft("RGB", requested)


def _check_dimensions(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageDecodeError(
            IMAGE_TOO_LARGE, _over_the_limit(f"{width}x{height} = {width * height} pixels", max_pixels)
        )
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(NOT_AN_IMAGE, f"{width}x{height} is too small to hold a face")


def _over_the_limit(pixels: str, max_pixels: int) -> str:
    """What the user reads (it travels in a 120-byte message field): the image's pixels, the limit, the setting."""
    return f"{pixels}, over the limit of {max_pixels} (setting FACEREC_MAX_IMAGE_PIXELS)"


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _wide_gray_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels carry arbitrary colour; put them on white as a viewer would show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_gray_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and float grayscale: scale to 8 bits rather than let `convert` clip everything to white."""
    # float32 and in place: a 40 Mpx image costs 160 MB here, not the 640 MB of float64 temporaries.
    values = np.array(image, dtype=np.float32)  # a writable copy (asarray of an "F" image is read-only)
    top = 65535.0 if values.max(initial=0) > 255 else 255.0
    values *= 255.0 / top
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8), mode="L").convert("RGB")
