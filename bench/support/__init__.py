"""What every benchmark shares: statistics (``stats``), tables (``tables``), the machine
and its load (``machine``), scratch databases and their accounting (``databases``), the
service in a subprocess (``server``), load generation over HTTP (``load``), the shared
Redis (``redis_probe``) and the command line (``cli``). The benchmarks themselves
(``bench.engine``, ``bench.http``, ``bench.redis``, ``bench.parked``) keep only what
they measure."""
