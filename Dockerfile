# mailbridge container: the daemon runs as PID 1 (exec form) and gets SIGTERM directly.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE alembic.ini ./
COPY mailbridge ./mailbridge
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/mailbridge --shell /usr/sbin/nologin mailbridge \
 && mkdir -p /var/lib/mailbridge /etc/mailbridge && chown mailbridge /var/lib/mailbridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/mailbridge.example.toml /etc/mailbridge/mailbridge.example.toml
ENV MAILBRIDGE_STORAGE__DATA_DIR=/var/lib/mailbridge \
    MAILBRIDGE_LOG__FORMAT=json \
    PYTHONUNBUFFERED=1
USER 10001
VOLUME /var/lib/mailbridge
WORKDIR /var/lib/mailbridge
ENTRYPOINT ["mailbridge"]
CMD ["run"]
