"""Stage edges: one module per DVC stage. ``run(...)`` does the work on given paths; ``command`` is its
Typer CLI and ``main(argv)`` runs it alone. File IO happens here, never in the core; no Prefect import."""
