"""Save and load a student: ``student.pt`` (state_dict) + ``student.json`` (spec, checksum, versions, extra).

``student.json``::

    {"format": "nucleate-student", "version": SPEC_VERSION, "spec": {...ModelSpec...},
     "weights": {"file": "student.pt", "sha256": "...", "bytes": n},
     "torch": "2.13.0+cpu", "nucleate": "0.1.0", "extra": {...caller's JSON...}}

Both files are written atomically, the weights first, so a present ``student.json`` always describes
complete weights. Loading rebuilds the network from the spec on the CPU (the ImageNet weight file is
not needed), checks the checksum and loads the state_dict strictly (``weights_only=True``). Every
failure is one :class:`ModelError` line that names the file.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import torch

import nucleate
from nucleate.io.atomic import atomic_write_bytes, atomic_write_text
from nucleate.models.spec import SPEC_VERSION, ModelError, ModelSpec
from nucleate.models.unet import StudentNet, build_from_spec

__all__ = ["FORMAT", "SPEC_FILE", "WEIGHTS_FILE", "LoadedModel", "load_model", "save_model"]

FORMAT = "nucleate-student"
SPEC_FILE = "student.json"
WEIGHTS_FILE = "student.pt"


class LoadedModel(NamedTuple):
    model: StudentNet  # in eval mode, on map_location
    spec: ModelSpec
    extra: dict[str, Any]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def save_model(directory: str | Path, model: StudentNet, spec: ModelSpec | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` into ``directory`` (created if needed); returns the ``student.json`` path.

    ``spec`` defaults to ``model.spec`` and must equal it. ``extra`` (JSON-serialisable: class names,
    round, ...) is stored as is and returned by :func:`load_model`. Tensors are saved on the CPU in
    the default (contiguous) memory format, so a channels_last or CUDA model reloads anywhere.
    """
    spec = model.spec if spec is None else spec
    if spec != model.spec:
        raise ModelError(f"save_model: the spec given ({spec}) is not the model's ({model.spec})")
    directory = Path(directory)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": SPEC_VERSION,
        "spec": spec.to_dict(),
        "torch": torch.__version__,
        "nucleate": nucleate.__version__,
        "extra": dict(extra or {}),
    }
    try:
        json.dumps(doc["extra"], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"save_model: extra must be JSON-serialisable ({exc})") from None
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    doc["weights"] = {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    atomic_write_bytes(directory / WEIGHTS_FILE, data)
    path = directory / SPEC_FILE
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def _read_doc(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"{path}: no saved student here (missing {SPEC_FILE}); train one first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not a readable model spec (corrupt file? {_first_line(exc)})") from None
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != FORMAT:
        raise ModelError(f"{path}: not a nucleate student spec (format {found!r}, expected {FORMAT!r})")
    if doc.get("version") != SPEC_VERSION:
        raise ModelError(f"{path}: model format version {doc.get('version')!r} (saved by nucleate "
                         f"{doc.get('nucleate', '?')}), this nucleate reads version {SPEC_VERSION}; retrain the "
                         f"model or load it with the nucleate version that saved it")
    return doc


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the saved student from ``directory``: ``(model in eval mode on map_location, spec, extra)``."""
    directory = Path(directory)
    path = directory / SPEC_FILE
    doc = _read_doc(path)
    try:
        spec = ModelSpec.from_dict(doc.get("spec"))  # type: ignore[arg-type]
        weights_info = doc["weights"]
        file_name, digest = str(weights_info["file"]), str(weights_info["sha256"])
        extra = doc.get("extra") or {}
    except (ModelError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: invalid model spec ({exc})") from None
    if Path(file_name).name != file_name:
        raise ModelError(f"{path}: invalid weights file name {file_name!r}")
    weights = directory / file_name
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise ModelError(f"{weights}: cannot read the student weights ({_first_line(exc)})") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ModelError(f"{weights}: checksum does not match {SPEC_FILE} (corrupt or replaced file); "
                         f"save the model again")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise ModelError(f"{weights}: corrupt weights file ({_first_line(exc)})") from None
    model = build_from_spec(spec, load_pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - RuntimeError (keys/shapes) or TypeError (not a dict)
        raise ModelError(f"{weights}: weights do not fit the spec in {SPEC_FILE} ({_first_line(exc)})") from None
    model.eval()
    if torch.device(map_location).type != "cpu":
        model.to(map_location)
    return LoadedModel(model, spec, extra)
