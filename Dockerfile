# One image for the Dagster processes (code location, webserver, daemon) and the run workers
# (xmatch-pipeline worker): the same code and dependencies everywhere, so a run's code origin
# (this image's python and module) resolves in the worker; chosen by the command in
# docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home

WORKDIR /opt/xmatch_pipeline
COPY pyproject.toml README.md ./
COPY xmatch_pipeline ./xmatch_pipeline
RUN pip install --no-cache-dir . \
    && mkdir -p "$DAGSTER_HOME"
COPY dagster.yaml workspace.yaml "$DAGSTER_HOME"/

RUN useradd --create-home --uid 10001 xmatch && chown -R xmatch "$DAGSTER_HOME"
USER xmatch
WORKDIR /opt/dagster/home

EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "xmatch_pipeline.orchestration.definitions"]
