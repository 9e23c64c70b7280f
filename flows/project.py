"""``nucleate init DIR``: a lab's own nucleate project, in its own git repository with its own DVC remote.

The project holds the pipeline definition (``dvc.yaml``), its hyper-parameters (``params.yaml``), the Prefect
deployments (``prefect.yaml``), ``storage/`` (DVC-tracked artifacts) and a README; the code is the *installed*
nucleate package. Its ``dvc.yaml`` is nucleate's own without the code dependencies (``src/...``, ``tasks/...``,
``flows/...``: they are not in the project), so upgrading nucleate never touches the project or re-runs a stage;
``dvc repro -f`` recomputes the results with the new code when the lab wants that.

The templates are the repository's ``dvc.yaml``, ``params.yaml``, ``prefect.yaml``, ``storage/.gitignore`` and
``storage/annotations/README.md``: a wheel carries them as ``flows/template/...`` (pyproject's ``force-include``),
an editable install reads them from the source checkout (:func:`template_text`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.resources
import json
import re
import shutil
from pathlib import Path

import typer
import yaml

import flows
from flows import lineage
from tasks._stage import Report, fail

__all__ = ["CODE_DIRS", "ProjectError", "InitReport", "init_command", "init_project", "project_dvc_yaml",
           "template_text"]

#: top-level folders of nucleate's own code: dvc.yaml deps below them are dropped in a project
CODE_DIRS = ("src", "tasks", "flows")
#: the sample data the template's vars point at (made by the project's sample_data stage)
SAMPLE = {"images": "storage/sample/images", "gold_masks": "storage/sample/masks"}
#: what `dvc init` leaves out: no analytics, no update checks, dvc stages what it changes for git
DVC_CONFIG = {"core.analytics": "false", "core.check_update": "false", "core.autostage": "true"}
#: characters a path may hold: dvc.yaml pastes ${images} / ${gold_masks} into shell commands unquoted
_SAFE_PATH = re.compile(r"[\w./@+,:=~-]+")
_CODE_DEP = re.compile(r"^\s*-\s+(?:" + "|".join(CODE_DIRS) + r")/\S*\s*(?:#.*)?$")
_DEPS_KEY = re.compile(r"^(\s*)deps:\s*(?:#.*)?$")

GITIGNORE = """\
# local state of the services and the round lock: never committed (holds tokens and databases)
.prefect*/
.ls-data/
.nucleate.lock
# DVC working files
/dvc_plots
# Python
__pycache__/
.venv/
"""

GOLD_README = """\
# gold_masks — ground-truth instance masks (optional)

Put ground-truth instance masks (int32 / uint16 label images, 0 = background) here, mirroring the relative paths
of the images in `{images}` (`gold/a.tif` -> `gold_masks/gold/a.tif`, `.tif`/`.tiff`/`.png`). Images in a
`gold/` sub-folder are the pseudo-mask quality gate and the validation set, images in `test/` are scored by
`evaluate`. With no masks here, there is no gold QC and nothing to evaluate. dvc.yaml's `vars` name this folder.
"""


class ProjectError(RuntimeError):
    """``nucleate init`` cannot make the project; one line saying why and what to do."""


@dataclasses.dataclass
class InitReport(Report):
    """What ``nucleate init`` made."""

    directory: Path
    images: str
    gold_masks: str
    remote: str
    remote_url: str
    commit: str

    def lines(self) -> list[str]:
        lines = [f"created nucleate project {self.directory} (git + DVC, first commit {self.commit[:12]})",
                 f"images: {self.images}; gold masks: {self.gold_masks} (dvc.yaml vars)",
                 f"DVC remote {self.remote!r}: {self.remote_url}"]
        lines.append(f"next: cd {self.directory} && dvc repro select (README.md says how a round runs)")
        return lines


def template_text(name: str) -> str:
    """Text of template ``name`` (a repository path such as ``dvc.yaml`` or ``storage/.gitignore``): the copy a
    wheel carries under ``flows/template/``, else the source checkout's (editable install)."""
    packaged = importlib.resources.files(flows).joinpath("template", *name.split("/"))
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(flows.__file__).resolve().parents[1] / name
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise ProjectError(f"template {name} not found in the nucleate install (flows/template/{name}) nor in a source "
                       f"checkout ({checkout}); reinstall nucleate")


def _yaml_value(value: str) -> str:
    return value if re.fullmatch(r"[\w./@+-]+", value) else '"' + value.replace('"', '\\"') + '"'


def _expected(template: str, images: str, gold_masks: str) -> dict:
    """What :func:`project_dvc_yaml` must produce, computed on the parsed YAML (its self-check)."""
    data = yaml.safe_load(template)
    data["vars"] = [{"images": images}, {"gold_masks": gold_masks}]
    for stage in data["stages"].values():
        deps = [d for d in stage.get("deps", []) if not str(d).startswith(tuple(f"{c}/" for c in CODE_DIRS))]
        if deps:
            stage["deps"] = deps
        else:
            stage.pop("deps", None)
    return data


def project_prefect_yaml(template: str, name: str) -> str:
    """The repository's ``prefect.yaml`` with the project's folder name as the deployments' names (what
    ``nucleate serve`` calls them too: ``open-round/<name>``, ...)."""
    quoted = json.dumps(name)
    out = [f"name: {quoted}" if line == "name: nucleate" else
           (f"- name: {quoted}" if line == "- name: nucleate" else line) for line in template.splitlines()]
    return "\n".join(out) + "\n"


def project_dvc_yaml(template: str, *, images: str, gold_masks: str) -> str:
    """nucleate's ``dvc.yaml`` text for a project: code deps removed (a ``deps:`` left empty goes too), the
    ``images`` / ``gold_masks`` vars set, the header comment rewritten; every other line and comment kept."""
    lines = template.splitlines()
    body = 0
    while body < len(lines) and (lines[body].startswith("#") or not lines[body].strip()):
        body += 1
    header = [
        "# nucleate pipeline of this project: `dvc repro` runs the installed nucleate's commands. Hyper-parameters",
        "# live in params.yaml, the images in the folders named by `vars`. Made by `nucleate init`; the code is",
        "# the installed nucleate package (no code deps here: after upgrading it, `dvc repro -f` recomputes).",
    ]
    kept = [line for line in lines[body:] if not _CODE_DEP.match(line)]
    out: list[str] = []
    for i, line in enumerate(kept):
        if (m := _DEPS_KEY.match(line)) is not None:
            nxt = next((k for k in kept[i + 1:] if k.strip() and not k.lstrip().startswith("#")), "")
            indent = len(nxt) - len(nxt.lstrip())
            if not (nxt.lstrip().startswith("- ") and indent > len(m.group(1))):
                continue
        for key, value in (("images", images), ("gold_masks", gold_masks)):
            line = re.sub(rf"^(\s*-\s*{key}:\s*)\S+", lambda m, v=value: m.group(1) + _yaml_value(v), line)
        out.append(line)
    text = "\n".join(header + out) + "\n"
    if yaml.safe_load(text) != _expected(template, images, gold_masks):
        raise ProjectError("dvc.yaml template: removing the code deps changed more than the deps (a nucleate bug; "
                           "please report it with your nucleate version)")
    return text


def without_stage(text: str, name: str) -> str:
    """``dvc.yaml`` text without stage ``name`` (its block of lines, comments included)."""
    out, skip = [], False
    for line in text.splitlines():
        if re.match(r"^\S", line) or re.match(r"^  \S", line):
            skip = line.startswith(f"  {name}:")
        if not skip:
            out.append(line)
    result = "\n".join(out) + "\n"
    want = yaml.safe_load(text)
    want["stages"].pop(name)
    if yaml.safe_load(result) != want:
        raise ProjectError(f"dvc.yaml template: removing stage {name} changed more than that stage (a nucleate bug)")
    return result


def _readme(name: str, version: str, images: str, gold_masks: str, remote: str) -> str:
    return f"""\
# {name} — a nucleate project

A nuclei-segmentation project run with [nucleate](https://pypi.org/project/nucleate/) (made with nucleate
{version} by `nucleate init`): annotators click one point per nucleus on a few images per round in Label Studio,
and each round trains a better student segmenter. This repository is the lab's own: its rounds, tags and DVC
remote live here, and the code is the installed `nucleate` package.

| file | what |
|---|---|
| `dvc.yaml` | the pipeline (ingest ... evaluate); its `vars` name the data folders |
| `params.yaml` | every hyper-parameter (`nucleate params check params.yaml` validates it) |
| `prefect.yaml` | Prefect deployments of the round flows (`prefect deploy`, for labs with work pools) |
| `storage/` | artifacts, tracked by DVC (git sees only `.gitignore`, `.dvc` and README files there) |

Images: `{images}`; gold masks: `{gold_masks}` (edit `vars` in `dvc.yaml` to point elsewhere; the
`sample_data` stage makes the sample images the defaults point at).

## Running a round

Scheduled: `nucleate serve` (a Prefect server must be running) opens rounds, waits for the annotators without
holding a process, and closes each round. By hand:

    nucleate round open      # ingest -> teacher -> select -> pre-annotations -> push to Label Studio
    # ... annotators click in Label Studio ...
    nucleate round close     # pull the export -> points -> pseudomasks -> train -> predict -> evaluate,
                             # then git commit + tag round-NNN and dvc push

Closing a round tracks its raw export with `dvc add storage/annotations/round-NNN` (one `round-NNN.dvc` per
round, committed) and records the rest in `dvc.lock`.

## Rounds are commits

Each closed round is a commit tagged `round-NNN` whose `dvc.lock` pins the export, points, pseudo-masks, model and
metrics. `git tag --list 'round-*'` lists them; `git checkout round-002 && dvc checkout` brings round 2's model
back (`dvc pull` first when this machine's cache lacks it); `git checkout main && dvc checkout` returns.

## The DVC remote

Artifacts are pushed to the DVC remote `storage`: `{remote}`. Move it with `dvc remote modify storage url NEW`;
for S3, `pip install 'nucleate[s3]'`, `dvc remote add -d storage s3://bucket/path` and put credentials in
`.dvc/config.local` (`dvc remote modify --local storage access_key_id ...`) or the environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, and `AWS_ENDPOINT_URL` for MinIO or another S3 server), never in git. The images annotators
see can live in S3 too: `labelstudio.image_storage: s3` and `labelstudio.s3_bucket` in `params.yaml`.
nucleate never runs `git push`: to keep the commits and tags on a server, `git remote add origin URL` and
`git push --follow-tags` after a round.

## Upgrading nucleate

`pip install -U nucleate` changes nothing here: `dvc.yaml` names no code, so `dvc repro` does not re-run stages
after an upgrade. Run `dvc repro -f` (or `dvc repro -f <stage>`) when the results should be recomputed with the new
code, and `nucleate params check params.yaml` to see parameters a new version added or renamed.
"""


def _data_path(value: Path | None, what: str, project: Path, default: str) -> str:
    """A data folder as dvc.yaml should name it: project-relative inside the project, else absolute."""
    if value is None:
        return default
    folder = value.expanduser().resolve()
    if not folder.is_dir():
        raise ProjectError(f"{what} {value}: folder not found; pass an existing folder")
    try:
        text = folder.relative_to(project).as_posix()
    except ValueError:
        text = folder.as_posix()
    if not _SAFE_PATH.fullmatch(text):
        raise ProjectError(f"{what} {value}: dvc.yaml pastes this path into shell commands unquoted; use a path of "
                           "letters, digits and . _ - / only (a symlink without spaces works)")
    return text


def init_project(directory: str | Path, *, images: str | Path | None = None, gold_masks: str | Path | None = None,
                 remote: str | None = None) -> InitReport:
    """Make a new nucleate project in ``directory`` (missing or empty): git + DVC initialised, ``dvc.yaml`` (no code
    deps; ``images`` / ``gold_masks`` as its vars, default the sample data), ``params.yaml``, ``prefect.yaml``,
    ``storage/``, ``.gitignore``, ``README.md``, the DVC remote ``remote`` (default: the folder
    ``<directory>/../<name>-dvc-remote``), and a first commit. Relative paths are relative to the current folder.
    Raises :class:`ProjectError` (nothing written) when ``directory`` is not empty or an input is wrong, and
    removes what it made when a later step fails."""
    project = Path(directory).expanduser().resolve()
    if project.exists() and not project.is_dir():
        raise ProjectError(f"{directory}: exists and is not a folder; nucleate init makes a new project folder")
    if project.is_dir() and any(project.iterdir()):
        raise ProjectError(f"{directory}: folder is not empty; nucleate init makes a new project in a new or empty "
                           "folder")
    if shutil.which("git") is None:
        raise ProjectError("git: command not found; install git (a project versions its rounds as git commits)")
    if images is None and gold_masks is not None:
        raise ProjectError("--gold-masks needs --images (the sample data has its own gold masks)")
    image_dir = _data_path(None if images is None else Path(images), "--images", project, SAMPLE["images"])
    gold_dir = _data_path(None if gold_masks is None else Path(gold_masks), "--gold-masks", project,
                          SAMPLE["gold_masks"] if images is None else "gold_masks")
    dvc_yaml = project_dvc_yaml(template_text("dvc.yaml"), images=image_dir, gold_masks=gold_dir)
    if images is not None:  # the lab's own images: the sample-data stage has nothing to do here
        dvc_yaml = without_stage(dvc_yaml, "sample_data")
    files = {
        "dvc.yaml": dvc_yaml,
        "params.yaml": template_text("params.yaml"),
        "storage/.gitignore": template_text("storage/.gitignore"),
        "storage/annotations/README.md": template_text("storage/annotations/README.md"),
        ".gitignore": GITIGNORE,
    }
    files["prefect.yaml"] = project_prefect_yaml(template_text("prefect.yaml"), project.name)
    if gold_dir == "gold_masks":
        files["gold_masks/README.md"] = GOLD_README.format(images=image_dir)
    if remote is None:
        remote_url = str(project.parent / f"{project.name}-dvc-remote")
    elif "://" in remote:
        remote_url = remote
    else:
        remote_url = str(Path(remote).expanduser().resolve())
    try:
        version = importlib.metadata.version("nucleate")
    except importlib.metadata.PackageNotFoundError:  # a source checkout on sys.path, not installed
        version = "(source checkout)"
    files["README.md"] = _readme(project.name, version, image_dir, gold_dir, remote_url)

    made_dir = not project.exists()
    made_remote = "://" not in remote_url and not Path(remote_url).exists()
    try:
        project.mkdir(parents=True, exist_ok=True)
        lineage.init_repo(project)
        lineage.configure(project, DVC_CONFIG)
        for rel, text in files.items():
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            (project / rel).write_text(text, encoding="utf-8")
        (project / "storage" / "annotations").chmod(0o700)  # exports name annotators (flows.ls_pull)
        name = lineage.ensure_remote(project, remote_url)
        sha = lineage.commit(project, ["."], f"nucleate init: new project (nucleate {version})")
    except BaseException:
        _undo(project, made_dir, Path(remote_url) if made_remote else None)
        raise
    return InitReport(directory=project, images=image_dir, gold_masks=gold_dir, remote=name, remote_url=remote_url,
                      commit=sha or "")


def _undo(project: Path, made_dir: bool, remote: Path | None) -> None:
    """Remove what a failed init made (the folder, or its contents when it existed empty; a new empty remote)."""
    if made_dir:
        shutil.rmtree(project, ignore_errors=True)
    elif project.is_dir():
        for child in project.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink()
    if remote is not None and remote.is_dir() and not any(remote.iterdir()):
        remote.rmdir()


def init_command(
    directory: Path = typer.Argument(..., help="Folder of the new project (must not exist, or be empty)."),
    images: Path | None = typer.Option(None, "--images", help="Folder of pool images (sub-folders pool/ gold/ test/ "
                                       "set the split). Default: the sample data, made by the sample_data stage."),
    gold_masks: Path | None = typer.Option(None, "--gold-masks", help="Ground-truth instance masks mirroring the "
                                           "images (gold QC, evaluation). Default with --images: DIR/gold_masks."),
    remote: str | None = typer.Option(None, "--remote", help="DVC remote: a folder or s3://bucket/path. Default: "
                                      "the folder DIR/../<DIR name>-dvc-remote."),
) -> None:
    """Create a lab's own nucleate project: git + DVC, dvc.yaml, params.yaml, prefect.yaml, storage/, a README."""
    try:
        report = init_project(directory, images=images, gold_masks=gold_masks, remote=remote)
    except (ProjectError, lineage.LineageError) as exc:
        fail(exc)
    for line in report.lines():
        typer.echo(line)
