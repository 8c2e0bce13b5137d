"""Rendering Ken Burns frames at float precision from an image decoded once.

Each frame resamples a float box of the fitted image to the full frame with Pillow: bicubic
for luma, bilinear for the half-resolution chroma (the eye, and SSIM on luma, see far less
there). Pillow releases the GIL while it resamples, so ``render_frames`` keeps one frame per
core in flight and yields them in order. Measured here (bench/media.py): about 30 ms of CPU
per 1080p frame (20 ms of it luma), against ~37 ms for the old zoompan pipeline, which runs
on one core only; on 2 cores our render stage is about 2x faster in wall time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from gpu_agent.ops.img2vid import Box

__all__ = ["Frame", "KenBurnsRenderer", "render_frames"]

Frame = tuple[bytes, bytes, bytes]  # raw yuv420p planes, written one after another


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
        self._y = Image.frombytes("L", (cw, ch), yuv420p[:luma])
        self._u = Image.frombytes("L", (cw // 2, ch // 2), yuv420p[luma:luma + chroma])
        self._v = Image.frombytes("L", (cw // 2, ch // 2), yuv420p[luma + chroma:])

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
        y = self._y.resize(size, Image.Resampling.BICUBIC, box=luma_box)
        u = self._u.resize(half, Image.Resampling.BILINEAR, box=chroma_box)
        v = self._v.resize(half, Image.Resampling.BILINEAR, box=chroma_box)
        return y.tobytes(), u.tobytes(), v.tobytes()


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
