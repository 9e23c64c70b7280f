"""Orchestration: the only code that touches Prefect, the Label Studio client and dvc/git subprocesses.

Modules import those libraries lazily, so ``nucleate --help`` and the stage commands start fast."""
