# Flowcore: a small image that runs as a non-root user.
#   docker build -t flowcore .
#   docker run --rm -e FLOWCORE_DATABASE_URL=postgresql+asyncpg://... flowcore flowcore migrate
#   docker run -p 8000:8000 -e FLOWCORE_DATABASE_URL=... flowcore
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 UV_PROJECT_ENVIRONMENT=/opt/venv UV_COMPILE_BYTECODE=1
RUN pip install --no-cache-dir "uv==0.13.9"
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
# dependencies first (cached across code changes), then the project itself
RUN uv sync --frozen --no-default-groups --no-install-project
COPY app ./app
COPY migrations ./migrations
COPY alembic.ini ./
RUN uv sync --frozen --no-default-groups

FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 flowcore
COPY --from=build /opt/venv /opt/venv
# the project is installed editable from /src (migrations and alembic.ini live beside app/)
COPY --from=build /src /src
WORKDIR /src
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLOWCORE_HOST=0.0.0.0 \
    FLOWCORE_PORT=8000
USER flowcore
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
# migrations run as their own step (`flowcore migrate`, the compose `migrate` service)
CMD ["flowcore", "serve", "--no-migrate"]
