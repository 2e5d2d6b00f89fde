"""The HTTP API: routers, schemas, SSE and the mapping of errors to problem details."""
