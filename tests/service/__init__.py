"""API and storage tests of the HTTP service, on SQLite and on Postgres."""
