"""The fonts an agent can burn captions with: fontconfig's families, and the directory libass
gets. Without fonts libass burns nothing and FFmpeg still exits 0, so an agent without any
refuses to start."""

from __future__ import annotations

from pathlib import Path

from gpu_agent.ffmpeg import run_capture

__all__ = ["find_fonts_dir", "font_families"]

_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts", "/usr/local/share/fonts",
              "/System/Library/Fonts", "/Library/Fonts")


async def font_families() -> frozenset[str]:
    """The font families fontconfig offers (empty when fc-list is unavailable)."""
    try:
        rc, out, _ = await run_capture(["fc-list", ":", "family"], 10.0)
    except (OSError, TimeoutError):
        return frozenset()
    if rc != 0:
        return frozenset()
    names = (n.strip() for line in out.decode(errors="replace").splitlines()
             for n in line.split(","))
    return frozenset(n for n in names if n)


def find_fonts_dir(configured: str) -> str:
    """The font directory libass gets; without one it burns nothing and still exits 0."""
    candidates = [configured] if configured else list(_FONT_DIRS)
    for d in candidates:
        if d and any(Path(d).rglob("*.[ot]tf")):
            return d
    raise RuntimeError(
        f"no fonts found in {configured or ', '.join(_FONT_DIRS)}: captions would render "
        "nothing. Install fonts-dejavu-core or set VIDFLEET_FONTS_DIR"
    )
