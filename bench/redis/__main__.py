"""``python -m bench.redis`` (and the scraper process it starts: ``--scrape-child``)."""

from bench.redis.cli import main

main()
