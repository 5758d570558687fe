# The streamscore image: every subcommand (serve, monitor, dashboard, produce, ...).
#   docker build -t streamscore .
#   docker run --rm streamscore streamscore --help
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamscore ./streamscore
COPY consumers ./consumers
COPY models ./models
COPY schemas ./schemas
COPY sinks ./sinks
COPY monitoring ./monitoring
RUN python -m venv /opt/streamscore && /opt/streamscore/bin/pip install --upgrade pip && /opt/streamscore/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/streamscore/bin:$PATH PYTHONUNBUFFERED=1
COPY --from=build /opt/streamscore /opt/streamscore
RUN useradd --system --uid 10001 --home-dir /var/lib/streamscore --create-home streamscore
USER 10001
WORKDIR /var/lib/streamscore
# 9300+: scorer /metrics (one port per process), 9400: monitor /metrics, 8050: ops dashboard
EXPOSE 9300 9301 9400 8050
CMD ["streamscore", "--help"]
