"""The round report: what a closed round selected, cost, gained — as ``storage/reports/round-NNN.md``, the
learning-curve PNG and Prefect artifacts.

:func:`round_report` reads only files, through :class:`nucleate.io.layout.Layout` rooted at the project's
``storage/``:

* ``selection.parquet`` — strategy, images and the coverage radius (the last pick's ``min_distance``: after
  this round every candidate lies within it of a labeled or picked image, in the selection space);
* ``annotations/round-NNN/export.json`` — annotation cost (Label Studio ``lead_time``: wall-clock time in
  the editor, idle included) and how much the pre-annotations helped (:mod:`nucleate.annotations.effort`);
  every round's export for the cumulative annotator minutes of the learning curve;
* ``points_report.json`` (finished / skipped tasks, rejected points, agreement F1), ``pseudomask_qc.json``,
  ``model/model_card.json``, ``metrics.json`` and ``plots/learning_curve.csv`` (one row per round).

A missing or unreadable input leaves its section as "not available (<file>: why)"; nothing raises. The
markdown holds no wall-clock time and no absolute path, so closing a round again writes the same bytes.
Prefect is imported only in :meth:`RoundReport.publish`, matplotlib only when the plot is drawn.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from nucleate.annotations.effort import MOVED_PX, RoundEffort, round_effort
from nucleate.config import Params
from nucleate.io import TableError, atomic_path, atomic_write_text, read_table, table_metadata
from nucleate.io.layout import Layout
from tasks._stage import StageError
from tasks.evaluate import CURVE_NAME, read_curve
from tasks.points import read_round, round_folders
from tasks.pseudomasks import GATES

__all__ = ["CURVE_KEYS", "PLOT_NAME", "RoundReport", "round_report"]

#: columns of :attr:`RoundReport.curve` (one row per round up to the report's)
CURVE_KEYS = ("round", "images", "clicks", "annotator_minutes", "test_dice", "test_aji", "test_pq", "test_f1",
              "gold_dice", "gold_aji")
#: the plot's file name below the reports folder
PLOT_NAME = f"{CURVE_NAME}.png"
_PLOTTED = (("test_dice", "Dice", "tab:blue"), ("test_aji", "AJI", "tab:orange"), ("test_pq", "PQ", "tab:green"))


class _Unavailable(Exception):
    """An input of one section cannot be used; the message names the file (relative to the project) and why."""


@dataclass
class RoundReport:
    """The report of one round: :attr:`markdown` (``reports/round-NNN.md``), :attr:`curve` (rows of
    :data:`CURVE_KEYS`), the round's annotation :attr:`effort` (``RoundEffort.as_dict()``; None without an
    export) and where it is written by default (:attr:`reports_dir`)."""

    round: int
    markdown: str
    curve: list[dict[str, Any]] = field(default_factory=list)
    effort: dict[str, Any] | None = None
    reports_dir: Path = Path("storage/reports")

    @property
    def name(self) -> str:
        """``round-NNN``."""
        return f"round-{self.round:03d}"

    @cached_property
    def png(self) -> bytes | None:
        """The learning-curve plot (PNG bytes), None when no round has both clicks and a test score."""
        return _plot(self.curve)

    def write(self, reports_dir: str | Path | None = None) -> list[Path]:
        """Write ``round-NNN.md`` and (when there is a curve) ``learning_curve.png`` into ``reports_dir``
        (default :attr:`reports_dir`), each atomically; returns the paths written."""
        folder = Path(reports_dir) if reports_dir is not None else self.reports_dir
        written = []
        if self.png is not None:
            with atomic_path(folder / PLOT_NAME) as tmp:
                tmp.write_bytes(self.png)
            written.append(folder / PLOT_NAME)
        atomic_write_text(folder / f"{self.name}.md", self.markdown)
        written.append(folder / f"{self.name}.md")
        return written

    def artifact_markdown(self) -> str:
        """:attr:`markdown` with the plot embedded as a base64 ``data:`` URI (Prefect image artifacts store only
        URLs, and the UI cannot reach the project's files)."""
        if self.png is None:
            return self.markdown
        uri = "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")
        return self.markdown.replace(f"]({PLOT_NAME})", f"]({uri})")

    def publish(self) -> dict[str, str] | None:
        """Inside a Prefect flow or task run: a markdown artifact ``round-NNN-report`` and a table artifact
        ``learning-curve`` (:attr:`curve`; not made when empty). Returns ``{key: artifact id}``; None (and
        nothing made) outside a run."""
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return None
        key = f"{self.name}-report"
        # _sync: Prefect's async_dispatch would hand back a coroutine inside an async flow; this call blocks
        made = {key: str(create_markdown_artifact(markdown=self.artifact_markdown(), key=key, _sync=True,
                                                  description=f"nucleate round {self.round} report"))}
        if self.curve:
            made["learning-curve"] = str(create_table_artifact(
                table=[dict(r) for r in self.curve], key="learning-curve", _sync=True,
                description=f"learning curve up to round {self.round}: clicks and annotator minutes vs scores"))
        return made


# -- reading ------------------------------------------------------------------------------------------------
class _Inputs:
    """Reads the project's files for one report; every failure becomes :class:`_Unavailable`."""

    def __init__(self, project: Path, layout: Layout):
        self.project, self.layout = project, layout

    def rel(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return path.relative_to(self.project).as_posix()
        return path.as_posix()

    def json(self, name: str, path: Path | None = None) -> dict[str, Any]:
        path = path if path is not None else self.layout.path(name)
        if not path.is_file():
            raise _Unavailable(self.rel(path))
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _Unavailable(f"{self.rel(path)}: not readable JSON ({type(exc).__name__})") from None
        if not isinstance(doc, dict):
            raise _Unavailable(f"{self.rel(path)}: not a JSON object")
        return doc

    def export(self, n: int) -> list[dict[str, Any]]:
        folder = self.layout.round_dir(n)
        if not (folder / "export.json").is_file():
            raise _Unavailable(self.rel(folder / "export.json"))
        try:
            return read_round(folder, n)[0]
        except StageError as exc:
            raise _Unavailable(f"{self.rel(folder / 'export.json')}: {_first_reason(exc)}") from None

    def round_exports(self) -> dict[int, Path]:
        try:
            return round_folders(self.layout.path("annotations"))
        except FileNotFoundError:
            return {}


def _first_reason(exc: Exception) -> str:
    """The part of an error message after the file name (``<path>: reason``)."""
    text = str(exc).splitlines()[0]
    return text.split(": ", 1)[1] if ": " in text else text


def _effort(tasks: list[dict[str, Any]], params: Params) -> RoundEffort:
    return round_effort(tasks, radius_px=params.labelstudio.agreement_radius_px, labels=params.labels)


def round_report(project: str | Path, round: int, params: Params) -> RoundReport:  # noqa: A002
    """The report of round ``round`` of the nucleate project folder ``project`` (its ``storage/``), with the
    agreement radius and point labels of ``params``. Reads files only; never raises for a missing or bad input
    (that section says "not available (<file>)")."""
    project = Path(project)
    n = int(round)
    layout = Layout(project / "storage")
    io = _Inputs(project, layout)
    effort: RoundEffort | None = None
    minutes: dict[int, float] = {}
    export_problems: dict[int, str] = {}
    names: dict[str, str] = {}
    for k in io.round_exports():
        if k > n:
            continue
        try:
            tasks = io.export(k)
        except _Unavailable as exc:
            export_problems[k] = str(exc)
            continue
        e = _effort(tasks, params)
        minutes[k] = e.minutes
        if k == n:
            effort = e
            names = {str(t["data"].get("image_id")): str(t["data"]["name"]) for t in tasks
                     if isinstance(t.get("data"), dict) and t["data"].get("name")}
    if effort is None and n not in export_problems:
        export_problems[n] = io.rel(layout.round_dir(n) / "export.json")
    curve, curve_note = _curve(io, n, minutes)
    sections: list[tuple[str, Callable[[], list[str]]]] = [
        ("Selection", lambda: _selection(io, n, names)),
        ("Annotation", lambda: _annotation(io, n)),
        ("Annotation cost", lambda: _cost(effort, export_problems.get(n), minutes, n)),
        ("Pre-annotations", lambda: _preannotations(effort, export_problems.get(n))),
        ("Pseudo-masks", lambda: _pseudomasks(io)),
        ("Model", lambda: _model(io, n)),
        ("Metrics", lambda: _metrics(io, n)),
        ("Learning curve", lambda: _curve_section(curve, curve_note, n, export_problems)),
    ]
    lines = [f"# Round {n} report", ""]
    for title, build in sections:
        lines += [f"## {title}", ""]
        try:
            body = build()
        except _Unavailable as exc:
            body = [f"Not available ({exc})."]
        lines += [*body, ""]
    markdown = "\n".join(lines).rstrip("\n") + "\n"
    return RoundReport(round=n, markdown=markdown, curve=curve,
                       effort=effort.as_dict() if effort is not None else None,
                       reports_dir=layout.path("reports"))


# -- sections -----------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: ints as is, floats to ``digits`` decimals, None / NaN / non-numbers as ``–``."""
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return "–"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _selection(io: _Inputs, n: int, names: Mapping[str, str]) -> list[str]:
    path = io.layout.path("selection")
    if not path.is_file():
        raise _Unavailable(io.rel(path))
    try:
        table = read_table("selection", path)
    except (TableError, OSError) as exc:
        raise _Unavailable(f"{io.rel(path)}: {_first_reason(exc)}") from None
    rows = sorted((r for r in table.to_pylist() if r["round"] == n), key=lambda r: r["rank"])
    if not rows:
        held = sorted({r["round"] for r in table.to_pylist()})
        raise _Unavailable(f"{io.rel(path)} holds round {', '.join(map(str, held)) or 'none'}, not round {n}")
    meta = table_metadata(table)
    strategies = sorted({r["strategy"] for r in rows})
    radius = rows[-1]["min_distance"]
    space = meta.get("space")
    out = [f"- strategy: {', '.join(strategies)}" + (f" (space: {space})" if space else ""),
           f"- images: {len(rows)}" + (f" (budget {meta['budget']})" if meta.get("budget") is not None else ""),
           "- coverage radius: " + (f"{radius:.4f} (the last pick's distance to its nearest centre: every candidate "
                                    "now lies within it of a labeled or picked image)" if radius is not None
                                    else f"– ({', '.join(strategies)} records no distance)"),
           ""]
    out += _table(["rank", "image", "image id", "min distance"],
                  [[str(r["rank"]), names.get(r["image_id"], "–").replace("|", "\\|"), f"`{r['image_id']}`",
                    _fmt(r["min_distance"], 4)] for r in rows])
    return out


def _annotation(io: _Inputs, n: int) -> list[str]:
    doc = io.json("points_report")
    r = (doc.get("rounds") or {}).get(str(n))
    if not isinstance(r, dict):
        raise _Unavailable(f"{io.rel(io.layout.path('points_report'))} has no round {n}")
    agreement = r.get("agreement") or {}
    f1 = agreement.get("mean_image_f1")
    radius = agreement.get("radius_px")
    out = [f"- tasks: {r.get('tasks')}; finished {r.get('finished')} (annotated {r.get('annotated_tasks')}, "
           f"skipped {r.get('skipped_tasks')}); open {r.get('open')}; deleted in Label Studio {r.get('deleted_tasks')}",
           f"- annotations: {r.get('annotations')} ({r.get('skipped_annotations')} skipped, "
           f"{r.get('superseded_annotations')} superseded by a later one of the same annotator)",
           f"- points: {r.get('points')}; rejected points: {r.get('rejected_points')}",
           "- agreement F1 between annotators: " + (
               f"{_fmt(f1)} (mean over {agreement.get('images')} image(s) with two or more annotators, "
               f"radius {_fmt(radius, 1)} px)" if f1 is not None else "– (no image had two or more annotators)")]
    for line in (r.get("rejected") or [])[:10]:
        out.append(f"  - {line}")
    if len(r.get("rejected") or []) > 10:
        out.append(f"  - … {len(r['rejected']) - 10} more in points_report.json")
    return out


def _cost(effort: RoundEffort | None, problem: str | None, minutes: Mapping[int, float], n: int) -> list[str]:
    if effort is None:
        raise _Unavailable(problem or "no export")
    d = effort.as_dict()
    total = sum(m for k, m in minutes.items() if k <= n)
    out = ["Label Studio's `lead_time` of each annotation: the wall-clock seconds the task was open in the editor "
           "until it was submitted or skipped, **idle time included** (an upper bound of the work). A click is a "
           "point of the final annotation (a kept pre-annotation counts, as in the learning curve).", ""]
    out += _table(["per finished annotation", "mean", "median", "pooled"], [
        ["seconds per image", _fmt(d["seconds_per_image"]["mean"], 1), _fmt(d["seconds_per_image"]["median"], 1),
         "–"],
        ["seconds per click", _fmt(d["seconds_per_click"]["mean"], 2), _fmt(d["seconds_per_click"]["median"], 2),
         _fmt(d["seconds_per_click"]["pooled"], 2)]])
    out += ["",
            f"- annotator minutes: {_fmt(d['annotator_minutes'], 1)} this round ({_fmt(d['skipped_minutes'], 1)} "
            f"on skipped tasks); {_fmt(round(total, 2), 1)} over rounds 1–{n}",
            f"- annotations: {d['annotations']} finished ({d['points']} points), {d['skipped_annotations']} skipped, "
            f"{d['untimed_annotations']} without a lead time (left out of the times)"]
    return out


def _preannotations(effort: RoundEffort | None, problem: str | None) -> list[str]:
    if effort is None:
        raise _Unavailable(problem or "no export")
    p = effort.as_dict()["preannotations"]
    if not p["annotations"]:
        note = (f"; {p['prediction_not_recorded']} annotation(s) of tasks with predictions recorded none shown "
                "(the project's model version differed)" if p["prediction_not_recorded"] else "")
        return [f"No annotation of this round was made on a pre-annotation (no student yet, or none pushed){note}."]
    out = [f"{p['annotations']} of {effort.as_dict()['annotations']} finished annotation(s) started from the "
           f"student's predicted points: {p['predicted']} predicted, {p['final']} in the final annotations; matched "
           f"one-to-one within {_fmt(p['radius_px'], 1)} px (labelstudio.agreement_radius_px).", ""]
    out += _table([f"kept (moved < {MOVED_PX:g} px)", "moved", "deleted", "added", "matched", "kept / predicted"],
                  [[str(p["kept"]), str(p["moved"]), str(p["deleted"]), str(p["added"]), str(p["matched"]),
                    _fmt(p["kept_fraction"])]])
    extra = []
    if p["median_move_px"] is not None:
        extra.append(f"median move {_fmt(p['median_move_px'], 2)} px")
    if p["relabeled"]:
        extra.append(f"{p['relabeled']} matched point(s) relabeled")
    if p["prediction_not_recorded"]:
        extra.append(f"{p['prediction_not_recorded']} annotation(s) of tasks with predictions recorded none shown")
    if extra:
        out += ["", "- " + "; ".join(extra)]
    return out


def _pseudomasks(io: _Inputs) -> list[str]:
    qc = io.json("pseudomask_qc")
    out = [f"- method: {qc.get('method')}; images: {qc.get('images')}; points: {qc.get('points')}; instances: "
           f"{qc.get('instances')} ({qc.get('unclicked')} blobs nobody clicked)"]
    mean, floors = qc.get("gold_mean") or {}, qc.get("floors") or {}
    if not mean:
        return [*out, "- gold QC: not scored (no gold image with both points and a ground-truth mask)"]
    gold = qc.get("gold") or {}
    out += [f"- gold QC on {len(gold)} image(s) (means):", ""]
    gates = [(key, floor, words) for key, (floor, words) in GATES.items()] + [("whole_aji", None, "whole-image AJI")]
    out += _table(["measure", "gold mean", "floor (pseudomask.*)"],
                  [[words, _fmt(mean.get(key)), f"{_fmt(floors.get(floor))} ({floor})" if floor else "–"]
                   for key, floor, words in gates])
    return out


def _model(io: _Inputs, n: int) -> list[str]:
    card = io.json("model", io.layout.path("model") / "model_card.json")
    metrics = card.get("metrics") or {}
    out = []
    if card.get("round") != n:
        out.append(f"**The model card is of round {card.get('round')}, not {n}.**")
    out += [f"- round {card.get('round')}: {card.get('supervision')} supervision, {card.get('images')} image(s), "
            f"{card.get('points')} click(s)",
            f"- training: {card.get('epochs')} epoch(s), {card.get('steps')} step(s) on {card.get('device')}; final "
            f"loss {_fmt(metrics.get('final_loss'), 4)}; gold pixel Dice {_fmt(metrics.get('gold_pixel_dice'))}",
            f"- nucleate {card.get('nucleate')}, torch {card.get('torch')}"]
    return out


def _metrics(io: _Inputs, n: int) -> list[str]:
    doc = io.json("metrics")
    splits = doc.get("splits") or {}
    if not isinstance(splits, dict) or not splits:
        raise _Unavailable(f"{io.rel(io.layout.path('metrics'))}: no split was scored")
    out = []
    if doc.get("round") != n:
        out += [f"**metrics.json is of round {doc.get('round')}, not {n}.**", ""]
    names = (("dice", "Dice"), ("object_dice", "object Dice"), ("aji", "AJI"), ("pq", "PQ"), ("f1", "detection F1"))
    out += _table(["split", "images", "nuclei", *(w for _, w in names)],
                  [[split, _fmt(s.get("n_images")), _fmt(s.get("n_gt_nuclei")), *(_fmt(s.get(k)) for k, _ in names)]
                   for split, s in sorted(splits.items()) if isinstance(s, dict)])
    out += ["", f"Scores are {doc.get('averaging') or 'means over images'}."]
    return out


def _num(text: Any, kind: type = float) -> Any:
    try:
        value = kind(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _curve(io: _Inputs, n: int, minutes: Mapping[int, float]) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of :data:`CURVE_KEYS` for the rounds ``<= n`` of ``plots/learning_curve.csv`` (annotator minutes
    summed over the saved exports of rounds ``<= row round``), or ``([], why not)``."""
    path = io.layout.path("plots") / f"{CURVE_NAME}.csv"
    if not path.is_file():
        return [], io.rel(path)
    try:
        rows, _ = read_curve(path)
    except StageError as exc:
        return [], f"{io.rel(path)}: {_first_reason(exc)}"
    out = []
    for r in rows:
        k = _num(r.get("round"), int)
        if k is None or k > n:
            continue
        spent = [m for j, m in minutes.items() if j <= k]
        row = {"round": k, "images": _num(r.get("images"), int), "clicks": _num(r.get("clicks"), int),
               "annotator_minutes": round(sum(spent), 2) if spent else None}
        row.update({key: _num(r.get(key)) for key in CURVE_KEYS[4:]})
        out.append(row)
    return out, None if out else f"{io.rel(path)} has no row of a round up to {n}"


def _curve_section(curve: list[dict[str, Any]], note: str | None, n: int, problems: Mapping[int, str]) -> list[str]:
    if not curve:
        raise _Unavailable(note or "no rows")
    out = ["Clicks are the training points of each round's model (all rounds so far); annotator minutes are the "
           "Label Studio lead times of every round so far (idle included).", ""]
    out += _table(["round", "images", "clicks", "annotator min", "test Dice", "test AJI", "test PQ", "test F1",
                   "gold Dice", "gold AJI"],
                  [[str(r["round"]), _fmt(r["images"]), _fmt(r["clicks"]), _fmt(r["annotator_minutes"], 1),
                    *(_fmt(r[k]) for k in CURVE_KEYS[4:])] for r in curve])
    missing = [f"round {k}: {why}" for k, why in sorted(problems.items()) if k <= n]
    if missing:
        out += ["", "Annotator minutes leave out " + "; ".join(missing) + "."]
    out += ["", f"![learning curve]({PLOT_NAME})" if _plot_rows(curve) else
            "(no plot: no round has both a click count and a test score)"]
    return out


# -- plot ---------------------------------------------------------------------------------------------------
def _plot_rows(curve: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in curve if r["clicks"] is not None and any(r[k] is not None for k, _, _ in _PLOTTED)]


def _plot(curve: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Two panels, test Dice / AJI / PQ against clicks and against annotator minutes; PNG bytes (Agg)."""
    rows = _plot_rows(curve)
    if not rows:
        return None
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, xkey, xlabel in zip(fig.subplots(1, 2, sharey=True), ("clicks", "annotator_minutes"),
                                ("clicks (training points)", "annotator minutes (Label Studio lead time)"),
                                strict=True):
        for key, name, color in _PLOTTED:
            xy = [(r[xkey], r[key]) for r in rows if r[xkey] is not None and r[key] is not None]
            if xy:
                ax.plot(*zip(*xy, strict=True), "-", marker="o", color=color, label=f"test {name}")
        for r in rows:
            if r[xkey] is not None:
                ax.annotate(f"r{r['round']}", (r[xkey], 1.0), textcoords="offset points", xytext=(0, 3),
                            ha="center", fontsize=8)
        if not any(r[xkey] is not None for r in rows):
            ax.text(0.5, 0.5, f"no {xkey.replace('_', ' ')} known", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0.0, 1.08)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    fig.axes[0].set_ylabel("test score (mean over images)")
    fig.suptitle("learning curve")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
