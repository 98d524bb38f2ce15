# syntax=docker/dockerfile:1
# The rate limiter node (default target `node`) and a Locust image (target `locust`) for the
# compose stack. Slim base, runtime dependencies only (pinned by requirements.txt), non-root.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 ratelimiter \
    && useradd --system --uid 10001 --gid ratelimiter --home-dir /app --shell /usr/sbin/nologin ratelimiter
WORKDIR /app
COPY requirements.txt pyproject.toml setup.py README.md ./
COPY crdt ./crdt
COPY service ./service
COPY stress_test ./stress_test
# The project's runtime dependencies (pyproject.toml) at the versions pinned in
# requirements.txt (as constraints, which pip takes without extras such as [standard]).
# gcc only while installing: it compiles Kafka's murmur2 (setup.py), then leaves; the
# check imports the installed package (-P: not the sources in the working directory).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && sed 's/\[[^]]*\]//' requirements.txt > constraints.txt \
    && pip install --no-cache-dir --constraint constraints.txt . \
    && pip install --no-cache-dir --force-reinstall --no-deps \
        "$(grep '^opentelemetry-proto==' requirements.txt)" \
    && python -P -c "from service.replication import codec; assert codec.COMPILED_MURMUR2" \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf build ./*.egg-info /var/lib/apt/lists/*
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/ratelimiter-entrypoint

FROM base AS locust
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --constraint constraints.txt locust
USER 10001:10001
EXPOSE 8089
CMD ["locust", "-f", "stress_test/locustfile.py"]

FROM base AS node
USER 10001:10001
ENV RATELIMITER_HOST=0.0.0.0 \
    RATELIMITER_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["ratelimiter-entrypoint"]
CMD ["ratelimiter", "serve"]
