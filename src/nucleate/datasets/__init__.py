"""Real nuclei data sets that ship inside registry packages (read from a given folder; no downloads)."""
