# syntax=docker/dockerfile:1
# mailbridge container image: the daemon is PID 1 (exec-form entrypoint) and gets SIGTERM.
#
#   docker build -t mailbridge .
#   docker run -d --name mailbridge -v mailbridge-data:/var/lib/mailbridge \
#     -v ./mailbridge.toml:/etc/mailbridge/mailbridge.toml:ro mailbridge
#
# Base image: Python 3.11 on Debian bookworm, the version the test suite runs on. The floating
# "3.11-slim-bookworm" tag is always a release at or above 3.11.10, which fixed CVE-2024-6923
# (email header injection); pin a digest (python:3.11-slim-bookworm@sha256:...) for
# reproducible builds and rebuild monthly for security updates.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with mailbridge, its dependencies and the OAuth extra ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/mailbridge
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY mailbridge ./mailbridge
COPY migrations ./migrations
RUN /opt/mailbridge/bin/pip install ".[oauth]" \
 && /opt/mailbridge/bin/python -m compileall -q /opt/mailbridge/lib

# --- runtime: the virtualenv, a fixed non-root user, one volume -------------------------------
FROM ${PYTHON_IMAGE}
ARG MAILBRIDGE_UID=10001
RUN groupadd --system --gid "${MAILBRIDGE_UID}" mailbridge \
 && useradd --system --uid "${MAILBRIDGE_UID}" --gid mailbridge \
      --home-dir /var/lib/mailbridge --no-create-home --shell /usr/sbin/nologin mailbridge \
 && install -d -o mailbridge -g mailbridge -m 0750 /var/lib/mailbridge \
 && install -d -m 0755 /etc/mailbridge
COPY --from=build /opt/mailbridge /opt/mailbridge
COPY LICENSE /usr/share/doc/mailbridge/LICENSE
COPY docs/operator-guide.md /usr/share/doc/mailbridge/operator-guide.md
COPY config/mailbridge.example.toml /etc/mailbridge/mailbridge.example.toml
COPY docker/mailbridge.toml /etc/mailbridge/mailbridge.toml
COPY docker/entrypoint.sh /usr/local/bin/mailbridge-entrypoint

# Settings for the container; override any of them with -e, or in the mounted TOML file
# (environment variables win over the file). Secrets: files in /run/secrets named like
# imap__password (Docker/Compose secrets).
ENV PATH=/opt/mailbridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MAILBRIDGE_CONFIG=/etc/mailbridge/mailbridge.toml \
    MAILBRIDGE_STORAGE__DATA_DIR=/var/lib/mailbridge \
    MAILBRIDGE_DATABASE__UPGRADE_ON_START=true \
    MAILBRIDGE_HTTP__ENABLED=true \
    MAILBRIDGE_HTTP__HOST=0.0.0.0 \
    MAILBRIDGE_HTTP__PORT=9464 \
    MAILBRIDGE_LOG__FORMAT=json

USER ${MAILBRIDGE_UID}:${MAILBRIDGE_UID}
WORKDIR /var/lib/mailbridge
# The SQLite database (unless database.url points at PostgreSQL) and the attachment store.
VOLUME ["/var/lib/mailbridge"]
# /metrics (Prometheus), /healthz, /readyz
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
  CMD ["mailbridge", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mailbridge-entrypoint"]
CMD ["run"]
