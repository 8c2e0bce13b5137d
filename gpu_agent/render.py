"""Rendering Ken Burns frames at float precision from an image decoded once.

Each frame resamples a float box of the fitted image to the full frame: one affine warp per
plane (OpenCV's ``warpAffine``, bilinear, in SIMD, 1/32 px sub-pixel steps), luma from a
canvas sharpened once to make up for bilinear's blur. OpenCV releases the GIL, so
``render_frames`` keeps one frame per core in flight and yields them in order. Measured here
(bench/media.py): about 6 ms of CPU per 1080p frame against ~28 ms for the old zoompan
pipeline; Pillow's bicubic box resize, used before, took about 30 ms.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from gpu_agent.ops.img2vid import Box

__all__ = ["Frame", "KenBurnsRenderer", "render_frames"]

# One frame per core is in flight already (render_frames): OpenCV's own threads would only
# fight them for the cores.
cv2.setNumThreads(1)
# Bilinear interpolation between pixels attenuates fine detail (its response is a triangle's,
# where bicubic's is flat to higher frequencies). Sharpening the canvas once, by this
# separable [-k, 1 + 2k, -k] with k = 0.1, makes up for most of it: SSIM-Y against the exact
# (Lanczos) render goes from 0.982 to 0.992 on the frames between pixels (bench/media.py);
# k = 0.2 overshoots (0.977).
_SHARPEN = np.array([-0.1, 1.2, -0.1], dtype=np.float32)

# Raw yuv420p planes, written one after another: views of the warped planes (a copy into
# bytes per plane would cost a tenth of a frame's render).
Frame = tuple[memoryview, memoryview, memoryview]


class KenBurnsRenderer:
    """Frames of ``width`` x ``height`` (even) from one raw yuv420p canvas of ``canvas`` size
    (default: the frame's size); boxes are in canvas pixels."""

    def __init__(self, yuv420p: bytes, width: int, height: int,
                 canvas: tuple[int, int] | None = None) -> None:
        cw, ch = canvas or (width, height)
        luma, chroma = cw * ch, (cw // 2) * (ch // 2)
        if len(yuv420p) != luma + 2 * chroma:
            raise ValueError(f"expected {luma + 2 * chroma} bytes of yuv420p, got "
                             f"{len(yuv420p)}")
        self.width, self.height = width, height
        self._canvas_width = cw
        planes = np.frombuffer(yuv420p, dtype=np.uint8)
        self._y = planes[:luma].reshape(ch, cw)
        self._y_sharp = cv2.sepFilter2D(self._y, -1, _SHARPEN, _SHARPEN,
                                        borderType=cv2.BORDER_REPLICATE)
        self._u = planes[luma:luma + chroma].reshape(ch // 2, cw // 2)
        self._v = planes[luma + chroma:].reshape(ch // 2, cw // 2)

    def render(self, box: Box) -> Frame:
        """The frame's Y, U and V planes (not joined: that copy costs ~5 % of a frame)."""
        size = (self.width, self.height)
        half = (self.width // 2, self.height // 2)
        luma_box = (box.x0, box.y0, box.x0 + box.w, box.y0 + box.h)
        # 4:2:0 chroma is left-sited (on the even luma columns), not centred between them:
        # shift by a quarter chroma pixel times (1 - source px per output px) so it stays on
        # the luma grid, kept inside the canvas.
        shift = 0.25 * (1.0 - box.w / self.width)
        shift = max(-box.x0 / 2, min(shift, (self._canvas_width - box.x0 - box.w) / 2))
        chroma_box = (box.x0 / 2 + shift, box.y0 / 2, (box.x0 + box.w) / 2 + shift,
                      (box.y0 + box.h) / 2)
        # A frame that is the canvas itself, pixel for pixel, is copied exactly; any other
        # samples between pixels, where bilinear blurs: from the pre-sharpened canvas.
        exact = ((box.w, box.h) == size and float(box.x0).is_integer()
                 and float(box.y0).is_integer())
        y = _warp(self._y if exact else self._y_sharp, luma_box, size)
        u = _warp(self._u, chroma_box, half)
        v = _warp(self._v, chroma_box, half)
        return y.data, u.data, v.data


def _warp(plane: np.ndarray, box: tuple[float, float, float, float],
          size: tuple[int, int]) -> np.ndarray:
    """``box`` (x0, y0, x1, y1 in pixel edges) of ``plane`` scaled to ``size``, bilinear:
    output pixel centre i + 0.5 samples the source at x0 + (i + 0.5) * scale (OpenCV
    indexes pixel centres at integers, hence the - 0.5)."""
    x0, y0, x1, y1 = box
    sx, sy = (x1 - x0) / size[0], (y1 - y0) / size[1]
    matrix = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])
    return cv2.warpAffine(plane, matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


async def render_frames(renderer: KenBurnsRenderer, boxes: Sequence[Box], *,
                        threads: int | None = None) -> AsyncIterator[Frame]:
    """Frames in order, rendered ``threads`` at a time (default: one per core)."""
    threads = threads or max(1, min(8, os.cpu_count() or 1))
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(threads, thread_name_prefix="render") as pool:
        pending: list[asyncio.Future[Frame]] = []
        next_index = 0
        try:
            while next_index < len(boxes) or pending:
                while next_index < len(boxes) and len(pending) < threads + 1:
                    pending.append(loop.run_in_executor(pool, renderer.render,
                                                        boxes[next_index]))
                    next_index += 1
                yield await pending.pop(0)
        finally:
            for future in pending:
                future.cancel()
