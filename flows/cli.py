"""The ``nucleate`` console script: one sub-command per stage, plus project utilities.

Stage commands are defined next to their stage (``tasks.<stage>.command``) and registered here, so
``nucleate ingest``, ``python -m tasks.ingest`` and the DVC stage run the same code with the same flags.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flows import dask_map, project
from flows.demo import demo_command
from flows.ls_cli import annotate_sim_command, ls_app
from flows.prefect_cli import prefect_app
from flows.round_cli import round_app
from flows.serve import command as serve_command
from tasks import evaluate, ingest, points_io, predict, pseudomasks, sample_data, summary, teacher, train
from tasks import select as select_stage

dask_map.register()  # NUCLEATE_DASK: the per-image stages map their images over a Dask cluster

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="nucleate: train a nuclei segmenter from one click per nucleus on a few well-chosen images per round.",
)
params_app = typer.Typer(no_args_is_help=True, help="Inspect and validate params.yaml.")
app.add_typer(params_app, name="params")

app.command("sample-data")(sample_data.command)
app.command("ingest")(ingest.command)
app.command("summary")(summary.command)
app.command("teacher")(teacher.command)
app.command("select")(select_stage.command)
app.command("pseudomasks")(pseudomasks.command)
app.command("train")(train.command)
app.command("predict")(predict.command)
app.command("evaluate")(evaluate.command)
app.add_typer(ls_app, name="ls")
app.command("annotate-sim")(annotate_sim_command)
app.add_typer(points_io.app, name="points")
app.add_typer(round_app, name="round")
app.command("init")(project.init_command)
app.add_typer(prefect_app, name="prefect")
app.command("serve")(serve_command)
app.command("demo")(demo_command)


@params_app.command("check")
def params_check(
    path: Path = typer.Argument(Path("params.yaml"), help="params file to validate."),
) -> None:
    """Validate a params file: unknown keys, wrong types and out-of-range values, one line each."""
    from nucleate.config import ParamsError, load_params

    try:
        load_params(path)
    except FileNotFoundError:
        typer.echo(f"error: {path}: file not found", err=True)
        raise typer.Exit(1) from None
    except ParamsError as exc:
        for line in exc.problems:
            typer.echo(f"{path}: {line}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{path}: ok")


def main() -> None:
    """Console-script entry point: plain log lines on stderr, then the command."""
    from tasks._stage import setup_logging

    setup_logging()
    app()


if __name__ == "__main__":
    main()
