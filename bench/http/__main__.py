"""``python -m bench.http``."""

from bench.http.cli import main

main()
