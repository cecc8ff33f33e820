# The aura-es image compose.yaml builds: the CLI, the workers and the shipped catalog.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aura_es ./aura_es
COPY projections ./projections
COPY workers ./workers
COPY catalog ./catalog
# The AURA application (projections/, workers/, catalog/) is imported from /app, beside
# the installed framework.
ENV PYTHONPATH=/app
RUN pip install --no-cache-dir .
USER nobody
