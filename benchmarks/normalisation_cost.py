"""Cost of the per-image percentile normalisation (16-bit, float) against the uint8 /255 path,
and of decoding large TIFFs, on a 36-Mpx image, best of 3 in one process (BENCHMARKS.md,
"Image formats").

Usage: python benchmarks/normalisation_cost.py
"""

import io
import time

import numpy as np
import tifffile

from activeseg.core.imaging import decode_image, display_image
from activeseg.models.preprocess import intensity_range, normalise_image


def best(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


rng = np.random.default_rng(0)
u8 = rng.integers(0, 256, (6000, 6000), dtype=np.uint8)
u16 = u8.astype(np.uint16) * 16 + 100
f32 = u16.astype(np.float32) / 7
base = best(lambda: normalise_image(u8, 1))
rows = [("uint8 grey (x/255, baseline)", base)]
rows.append(("uint16 grey (percentile stretch)", best(lambda: normalise_image(u16, 1))))
rows.append(("float32 grey (percentile stretch)", best(lambda: normalise_image(f32, 1))))
rows.append(
    ("uint16 grey: intensity_range only (grid of ~1 Mpx)", best(lambda: intensity_range(u16)))
)
rows.append(
    (
        "uint16 grey: np.percentile on all 36 Mpx (not used)",
        best(lambda: np.percentile(u16, [0.5, 99.5]), 1),
    )
)
rows.append(("uint16 grey -> display uint8", best(lambda: display_image(u16))))
rgb8 = np.repeat(u8[:3000, :, None], 3, axis=2)  # 18 Mpx RGB keeps memory modest
rgb16 = rgb8.astype(np.uint16) * 16
b3 = best(lambda: normalise_image(rgb8, 3))
rows.append(("uint8 RGB 18 Mpx (baseline)", b3))
rows.append(("uint16 RGB 18 Mpx", best(lambda: normalise_image(rgb16, 3))))
buf = io.BytesIO()
tifffile.imwrite(buf, u16)
tif16 = buf.getvalue()
rows.append(("decode_image 36-Mpx uint16 TIFF", best(lambda: decode_image(tif16))))
buf = io.BytesIO()
tifffile.imwrite(buf, np.dstack([u16[:3000]] * 3), photometric="rgb")
rgbtif = buf.getvalue()
rows.append(
    ("decode_image 18-Mpx uint16 RGB TIFF (tifffile route)", best(lambda: decode_image(rgbtif)))
)
for name, t in rows:
    ref = b3 if "RGB 18" in name else base
    print(f"| {name} | {t * 1000:.0f} ms | {t / ref:.2f}x |")
