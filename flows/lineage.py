"""DVC and git for the flows: the one home of every ``dvc`` / ``git`` subprocess call nucleate makes.

Each closed round is a git commit + tag ``round-NNN`` whose ``dvc.lock`` pins what made it (the round's export,
points, pseudo-masks, model, metrics); ``dvc push`` sends those artifacts to the project's DVC remote, and
``git checkout round-NNN && dvc checkout`` (:func:`checkout_round`) brings a round back.

* DVC runs as ``[sys.executable, "-m", "dvc", ...]`` with this interpreter's ``bin`` folder first on ``PATH``, so
  the ``nucleate`` commands in ``dvc.yaml`` are the same install as the caller, and with ``DVC_NO_ANALYTICS=1``.
  Its output lines go to the caller's logger as they come (a Prefect task shows them in its log).
* Git uses the user's identity when one is configured, else ``nucleate <nucleate@localhost>``.
* Nothing here runs ``git push``: where the project's git repository lives is the lab's choice, so a lab that
  wants its commits and tags on a server adds that step itself (``git push --follow-tags`` after a round).

Every failure is a :class:`LineageError` with one line: what failed and how to fix it (for a failed stage, the
stage's own ``error: ...`` line), never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "LineageError",
    "checkout_round",
    "closed_rounds",
    "commit",
    "commit_round",
    "configure",
    "default_remote",
    "dvc",
    "ensure_remote",
    "init_repo",
    "is_repo",
    "pull",
    "push",
    "repro",
    "round_tag",
    "status_clean",
    "tag_round",
    "track",
]

_LOG = logging.getLogger("nucleate.lineage")
#: fallback git identity when the user has none configured
IDENTITY = {"user.name": "nucleate", "user.email": "nucleate@localhost"}
#: files that record how a round's artifacts were made; a round commit always takes their changes
LINEAGE_FILES = ("dvc.yaml", "dvc.lock", "params.yaml")
_TAG = re.compile(r"round-(\d{3,})")


class LineageError(RuntimeError):
    """A dvc or git step failed; the message is one line saying what failed and how to fix it."""


# ---------------------------------------------------------------------------------------------- dvc


def _env() -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    return {**os.environ, "PATH": bin_dir + (os.pathsep + path if path else ""), "DVC_NO_ANALYTICS": "1"}


def _level(line: str) -> int:
    if line.startswith(("ERROR", "error:")):
        return logging.ERROR
    if line.startswith(("WARNING", "warning:")):
        return logging.WARNING
    return logging.INFO


def dvc(args: Sequence[str | os.PathLike], cwd: str | os.PathLike, log: logging.Logger | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run ``dvc ARGS`` in project ``cwd`` and return the finished process (its exit status is not checked).

    stdout and stderr are merged, in order, into ``.stdout`` (``.stderr`` is empty); each non-blank line is also
    sent to ``log`` as it comes (ERROR / ``error:`` lines at error level, WARNING lines at warning level).
    """
    cmd = [sys.executable, "-m", "dvc", *map(str, args)]
    _require_dir(cwd)
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            text = line.rstrip()
            if log is not None and text.strip():
                log.log(_level(text), text)
        code = proc.wait()
    return subprocess.CompletedProcess(cmd, code, "".join(lines), "")


def _dvc_quiet(args: Sequence[str], cwd: str | os.PathLike) -> subprocess.CompletedProcess[str]:
    """A dvc query whose stdout is parsed (stderr kept apart)."""
    _require_dir(cwd)
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)


def _require_dir(cwd: str | os.PathLike) -> None:
    if not Path(cwd).is_dir():
        raise LineageError(f"{cwd}: project folder not found; pass the folder of a nucleate project (`nucleate init`)")


def _failure(output: str) -> str:
    """The one line that says why a dvc command failed: the stage's own ``error:`` line, else DVC's ERROR line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line
    for line in lines:
        if line.startswith("ERROR"):
            return line
    return lines[-1] if lines else "no output"


def _hint(line: str) -> str:
    if "is busy" in line or "Unable to acquire lock" in line:
        return "; another dvc command is running in this project: wait for it (one round at a time)"
    if "not a DVC repository" in line or "you are not inside of a DVC repository" in line:
        return "; run it in a nucleate project folder (`nucleate init DIR` makes one)"
    return ""


def repro(stage: str, cwd: str | os.PathLike, log: logging.Logger | None = None) -> bool:
    """``dvc repro STAGE`` (and whatever it depends on that changed); True when some stage actually ran."""
    result = dvc(["repro", stage], cwd, log)
    if result.returncode:
        line = _failure(result.stdout)
        if line.startswith("error: "):
            raise LineageError(f"`dvc repro {stage}` failed: {line.removeprefix('error: ')}")
        raise LineageError(f"`dvc repro {stage}` failed in {cwd}: {line}{_hint(line) or '; its log above says why'}")
    return "Running stage '" in result.stdout


def _relative(path: str | os.PathLike, cwd: str | os.PathLike) -> str:
    target = Path(path)
    if target.is_absolute():
        try:
            target = target.resolve().relative_to(Path(cwd).resolve())
        except ValueError:
            raise LineageError(f"{path}: outside the project {cwd}; only paths inside it can be versioned") from None
    return target.as_posix()


def track(path: str | os.PathLike, cwd: str | os.PathLike, log: logging.Logger | None = None) -> bool:
    """``dvc add PATH`` (a file or folder inside the project): writes ``PATH.dvc`` for git. True when that .dvc
    file was created or changed; tracking unchanged data again changes nothing."""
    rel = _relative(path, cwd)
    if not (Path(cwd) / rel).exists():
        raise LineageError(f"{rel}: not found in {cwd}; nothing to track")
    dvcfile = Path(cwd) / f"{rel}.dvc"
    before = dvcfile.read_text() if dvcfile.is_file() else None
    result = dvc(["add", rel], cwd, log)
    if result.returncode:
        line = _failure(result.stdout)
        raise LineageError(f"`dvc add {rel}` failed: {line}{_hint(line)}")
    return dvcfile.read_text() != before


def _config(cwd: str | os.PathLike):
    """The project's merged DVC config (repo, local, user and system levels), read in-process (no lock taken)."""
    from dvc.config import Config, ConfigError

    dvc_dir = Path(cwd) / ".dvc"
    if not dvc_dir.is_dir():
        raise LineageError(f"{cwd}: not a DVC project (no .dvc folder); `nucleate init DIR` makes one")
    try:
        return Config(dvc_dir=str(dvc_dir))
    except ConfigError as exc:
        raise LineageError(f"{dvc_dir / 'config'}: {str(exc).splitlines()[0]}; fix it with `dvc config`") from None


def default_remote(cwd: str | os.PathLike) -> str | None:
    """Name of the project's default DVC remote (``core.remote``), or None when none is set."""
    return _config(cwd)["core"].get("remote") or None


def push(cwd: str | os.PathLike, log: logging.Logger | None = None) -> bool:
    """``dvc push`` to the default remote. False (and one warning line) when the project has no default remote."""
    remote = default_remote(cwd)
    if remote is None:
        (log or _LOG).warning(f"dvc push skipped: {cwd} has no default DVC remote; add one with "
                              "`dvc remote add -d storage URL` (a folder outside the project, or s3://bucket/path)")
        return False
    _transfer("push", remote, cwd, log)
    return True


def pull(cwd: str | os.PathLike, log: logging.Logger | None = None) -> bool:
    """``dvc pull`` from the default remote: the cache and workspace get what ``dvc.lock`` / ``.dvc`` files pin.
    False (and one warning line) when the project has no default remote."""
    remote = default_remote(cwd)
    if remote is None:
        (log or _LOG).warning(f"dvc pull skipped: {cwd} has no default DVC remote; add the one the rounds were "
                              "pushed to with `dvc remote add -d storage URL`")
        return False
    _transfer("pull", remote, cwd, log)
    return True


def _transfer(what: str, remote: str, cwd: str | os.PathLike, log: logging.Logger | None) -> None:
    """``dvc push`` / ``dvc pull``; a failure is one :class:`LineageError` line naming the remote and the fix.

    A failed transfer changes nothing already there: push only adds objects to the remote, pull only adds to the
    cache and then checks out what it has. The secrets dvc was given are never in the message: dvc-s3 reads them
    from ``.dvc/config.local`` or the environment and its error lines name only the key id, if anything."""
    result = dvc([what], cwd, log)
    if not result.returncode:
        return
    from flows.s3 import DENIED_CODES  # the S3 codes of rejected credentials; imported only on a failure

    # what an object store says when the credentials are wrong (S3 error codes, HTTP 403, botocore's words)
    denied = re.compile(rf"\b({'|'.join((*DENIED_CODES, 'Forbidden', 'NoCredentialsError'))})\b|\(403\)|"
                        r"Unable to locate credentials")
    line = _failure(result.stdout)
    url = str(_config(cwd)["remote"].get(remote, {}).get("url", ""))
    where = f"remote {remote!r} ({url})" if url else f"remote {remote!r}"
    direction = "to" if what == "push" else "from"
    if denied.search(result.stdout):
        raise LineageError(
            f"`dvc {what}` {direction} {where} failed: the object store rejected the credentials; set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO / another S3 server) in "
            f"the environment, or `dvc remote modify --local {remote} access_key_id ...`, then run `dvc {what}` again")
    raise LineageError(f"`dvc {what}` {direction} {where} failed: {line}; fix the remote "
                       f"(`dvc remote list`, `dvc remote modify`) and run `dvc {what}` again")


def status_clean(cwd: str | os.PathLike) -> bool:
    """True when ``dvc status`` finds every stage and tracked file up to date. A stage marked
    ``always_changed`` (``select``) counts as clean unless something else about it changed."""
    result = _dvc_quiet(["status", "--json"], cwd)
    if result.returncode:
        line = _failure(result.stderr + result.stdout)
        raise LineageError(f"`dvc status` failed in {cwd}: {line}{_hint(line)}")
    text = result.stdout.strip()
    try:
        status = json.loads(text[text.index("{"):]) if text else {}
    except ValueError:
        raise LineageError(f"`dvc status --json` in {cwd} printed no JSON: {text[:200]!r}") from None
    return not {name: what for name, what in status.items() if what != ["always changed"]}


def ensure_remote(cwd: str | os.PathLike, url: str, name: str = "storage") -> str:
    """Make ``url`` the project's default DVC remote ``name`` unless it has a default remote already; returns the
    default remote's name. A local folder (a path; relative = to the project) is created; ``s3://bucket/path``
    needs ``pip install 'nucleate[s3]'`` (dvc-s3) to push, and its credentials go to ``.dvc/config.local``
    (``dvc remote modify --local NAME access_key_id ...``) or the usual AWS environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``; ``AWS_ENDPOINT_URL`` for MinIO or another S3 server), never to git."""
    config = _config(cwd)
    if config["core"].get("remote"):
        return config["core"]["remote"]
    if "://" not in url:
        folder = Path(url).expanduser()
        (folder if folder.is_absolute() else Path(cwd) / folder).mkdir(parents=True, exist_ok=True)
        url = str(folder)
    args = ["remote", "default", name] if name in config["remote"] else ["remote", "add", "-d", name, url]
    result = _dvc_quiet(args, cwd)
    if result.returncode:
        line = _failure(result.stderr + result.stdout)
        raise LineageError(f"`dvc {' '.join(args)}` failed in {cwd}: {line}{_hint(line)}")
    return name


def configure(cwd: str | os.PathLike, settings: dict[str, str]) -> None:
    """Set ``section.option`` values (e.g. ``{"core.autostage": "true"}``) in the project's ``.dvc/config``, which
    is committed with it (what ``dvc config NAME VALUE`` does, in one write)."""
    from dvc.config import ConfigError

    try:
        with _config(cwd).edit("repo") as conf:
            for key, value in settings.items():
                section, option = key.split(".", 1)
                conf.setdefault(section, {})[option] = value
    except ConfigError as exc:
        raise LineageError(f"{cwd}/.dvc/config: {str(exc).splitlines()[0]}") from None


def init_repo(cwd: str | os.PathLike) -> None:
    """``git init`` + ``dvc init`` in folder ``cwd`` (which must exist)."""
    _git(["init", "-q"], cwd)
    result = _dvc_quiet(["init", "-q"], cwd)
    if result.returncode:
        line = _failure(result.stderr + result.stdout)
        raise LineageError(f"`dvc init` failed in {cwd}: {line}")


# ---------------------------------------------------------------------------------------------- git


def _git(args: Sequence[str], cwd: str | os.PathLike, *, identity: bool = False, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    _require_dir(cwd)
    cmd = ["git", *(_identity(cwd) if identity else []), *args]
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except FileNotFoundError:
        raise LineageError("git: command not found; install git (nucleate versions rounds as git commits)") from None
    if check and result.returncode:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[0] if lines else "")
        raise LineageError(f"`git {' '.join(args)}` failed in {cwd}: {why or f'exit status {result.returncode}'}")
    return result


def _identity(cwd: str | os.PathLike) -> list[str]:
    """``-c user.name=... -c user.email=...`` for what the user has not configured."""
    flags = []
    for key, fallback in IDENTITY.items():
        if not _git(["config", "--get", key], cwd, check=False).stdout.strip():
            flags += ["-c", f"{key}={fallback}"]
    return flags


def is_repo(cwd: str | os.PathLike) -> bool:
    """True when ``cwd`` is the top folder of a git work tree."""
    if not Path(cwd).is_dir():
        return False
    result = _git(["rev-parse", "--show-toplevel"], cwd, check=False)
    return result.returncode == 0 and Path(result.stdout.strip()).resolve() == Path(cwd).resolve()


def round_tag(r: int) -> str:
    """The git tag of closed round ``r``: ``round-NNN`` (the name of its export folder)."""
    if int(r) < 1:
        raise ValueError(f"rounds count from 1, got {r}")
    return f"round-{int(r):03d}"


def closed_rounds(cwd: str | os.PathLike) -> list[int]:
    """Numbers of the rounds with a ``round-NNN`` tag, ascending."""
    tags = _git(["tag", "--list", "round-*"], cwd).stdout.split()
    return sorted(int(m.group(1)) for tag in tags if (m := _TAG.fullmatch(tag)))


def _rev(ref: str, cwd: str | os.PathLike) -> str | None:
    result = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd, check=False)
    return result.stdout.strip() or None


def _lineage_paths(cwd: str | os.PathLike) -> list[str]:
    """Pathspecs of the lineage files and every ``.gitignore`` (dvc writes them) in the work tree or known to git,
    for ``git add -A`` (which compares contents, so only real changes get staged)."""
    specs = [*LINEAGE_FILES, ":(glob)**/.gitignore"]
    listed = _git(["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *specs], cwd).stdout
    names = {name for name in listed.split("\0") if name}
    return [*(name for name in LINEAGE_FILES if name in names),
            *([specs[-1]] if any(Path(name).name == ".gitignore" for name in names) else [])]


def _unstale(cwd: str | os.PathLike, names: Sequence[str]) -> None:
    """Drop the index entries of files whose content differs from their entry although their stat data match.

    dvc's autostage writes the git index without git's "racy" safeguard, so a file rewritten with the same size in
    the same second as the last commit (params.yaml: ``a: 1`` -> ``a: 5``) looks unchanged to ``git add``; an
    entry removed from the index is hashed afresh by the next ``git add``.
    """
    files = [name for name in names if (Path(cwd) / name).is_file()]
    if not files:
        return
    staged = {}
    for line in _git(["ls-files", "-s", "-z", "--", *files], cwd).stdout.split("\0"):
        if line:
            info, name = line.split("\t", 1)
            staged[name] = info.split()[1]
    if not staged:
        return
    names = sorted(staged)
    hashes = _git(["hash-object", "--", *names], cwd).stdout.split()
    stale = [name for name, blob in zip(names, hashes, strict=True) if staged[name] != blob]
    if stale:
        _git(["rm", "-q", "--cached", "--", *stale], cwd)


def _commit(cwd: str | os.PathLike, pathspecs: Sequence[str], message: str) -> str | None:
    if pathspecs:
        _unstale(cwd, [spec for spec in pathspecs if not spec.startswith(":(")])
        _git(["add", "-A", "--", *pathspecs], cwd)
    if _git(["diff", "--cached", "--quiet"], cwd, check=False).returncode == 0:
        return None
    _git(["commit", "-q", "-m", message], cwd, identity=True)
    return _rev("HEAD", cwd)


def commit(cwd: str | os.PathLike, paths: Iterable[str | os.PathLike], message: str) -> str | None:
    """Stage ``paths`` (files or folders relative to ``cwd``; "." = everything not ignored) and commit if anything
    is staged. Returns the new commit's sha, or None when there was nothing to commit."""
    return _commit(cwd, [_relative(p, cwd) for p in paths], message)


def commit_round(cwd: str | os.PathLike, r: int, paths: Iterable[str | os.PathLike], message: str | None = None
                 ) -> str | None:
    """Commit round ``r``: stage ``paths`` (e.g. the export's ``storage/annotations/round-NNN.dvc``, the round
    report) plus the changes of ``dvc.lock``, ``dvc.yaml``, ``params.yaml`` and every ``.gitignore`` dvc touched,
    then commit if anything is staged (message default: ``round-NNN: close round N``). Returns the new commit's
    sha, or None when there was nothing to commit (a rerun after the commit)."""
    tag = round_tag(r)
    pathspecs = [*(_relative(p, cwd) for p in paths), *_lineage_paths(cwd)]
    return _commit(cwd, pathspecs, message or f"{tag}: close round {int(r)}")


def tag_round(cwd: str | os.PathLike, r: int) -> str:
    """Tag HEAD ``round-NNN`` (annotated) and return the tag. A tag already at HEAD is fine (a rerun); a tag at
    another commit is a :class:`LineageError` naming both commits."""
    tag = round_tag(r)
    head = _rev("HEAD", cwd)
    if head is None:
        raise LineageError(f"{cwd}: no commit to tag {tag}; commit the round first")
    existing = _rev(f"refs/tags/{tag}", cwd)
    if existing == head:
        return tag
    if existing is not None:
        raise LineageError(f"tag {tag} already marks commit {existing[:12]}, not HEAD {head[:12]}: round {int(r)} "
                           f"was closed before; look at it with `git checkout {tag}`, or delete the tag "
                           f"(`git tag -d {tag}`) to close the round again")
    _git(["tag", "-a", tag, "-m", f"nucleate round {int(r)}"], cwd, identity=True)
    return tag


def checkout_round(cwd: str | os.PathLike, r: int, log: logging.Logger | None = None) -> None:
    """``git checkout round-NNN`` (a detached HEAD) then ``dvc checkout``: the workspace holds that round's
    artifacts (model, metrics, ...) again. When the local cache lacks them, ``dvc pull`` fetches them from the
    default remote. Go back with ``git checkout <branch> && dvc checkout``."""
    tag = round_tag(r)
    if _rev(f"refs/tags/{tag}", cwd) is None:
        closed = ", ".join(map(str, closed_rounds(cwd))) or "none"
        raise LineageError(f"{cwd}: no tag {tag}; closed rounds: {closed}")
    _git(["checkout", "-q", tag], cwd)
    result = dvc(["checkout"], cwd, log)
    if result.returncode == 0:
        return
    if default_remote(cwd) is not None:
        result = dvc(["pull"], cwd, log)
        if result.returncode == 0:
            return
    line = _failure(result.stdout)
    raise LineageError(f"`dvc checkout` of {tag} failed: {line}; the cache lacks the round's files: `dvc pull` "
                       "them from the remote the round was pushed to")
