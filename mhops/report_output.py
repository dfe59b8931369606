"""Publishing report documents: atomically, byte for byte reproducibly, and as PDF.

Owns the report folder published by renaming a complete temp folder into place (an
older one is replaced only then), the zip whose entries carry a fixed time, mode and
order, and printing HTML to PDF with headless Chromium (the renderer found, a Chinese
font check, and the creation dates Chromium stamps pinned so the bytes do not change).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

ZIP_TIME = (1980, 1, 1, 0, 0, 0)   # the earliest a zip can say: entries carry no build time
PDF_DATE = b"D:19800101000000+00'00'"


def find_chromium(configured: str | None = None) -> str | None:
    """The PDF renderer: the configured one, else Debian's headless shell (starts in about
    half the time of the full browser), else chromium."""
    for name in ([configured] if configured else []) + [
            "chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    return None


def has_cjk_font() -> bool:
    """Whether fontconfig knows a Chinese font (else the PDF shows boxes for Chinese)."""
    try:
        out = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(out.stdout.strip())


def start_pdf(chromium: str, html: Path, pdf: Path, profile: Path) -> subprocess.Popen:
    """Print `html` to `pdf` with headless Chromium (runs while the zip is being written)."""
    return subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
         f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions",
         f"--print-to-pdf={pdf}", html.as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HOME": str(profile)})


def pin_pdf_dates(data: bytes) -> bytes:
    """Chromium stamps the print time; pin it (same length: xref offsets stay valid)."""
    return re.sub(rb"(/(?:CreationDate|ModDate) \()D:[0-9]{14}[^)]*(\))",
                  lambda m: m.group(1) + PDF_DATE + m.group(2) if len(m.group(0)) ==
                  len(m.group(1)) + len(PDF_DATE) + 1 else m.group(0), data)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip with entries in name order, fixed times and modes: same files, same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            # Level 1: the sheets are repetitive HTML, most of the gain at a fraction of
            # the time of the default level.
            z.writestr(info, files[name], compresslevel=1)
    return buf.getvalue()


def publish_dir(final: Path, files: dict[str, bytes]) -> None:
    """Write a report folder beside `final` and rename it into place (replacing an old one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        for rel, data in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.rename(final, old / "x")
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
