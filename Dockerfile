# The codx-db command line in a container (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md relstorage.conf ./
COPY db ./db
COPY migrations ./migrations
# The persistent-cache directory belongs to the user that runs codx-db: a new named volume
# mounted there takes this ownership.
RUN pip install --no-cache-dir . && useradd --system --create-home codx \
    && mkdir -p /var/cache/codx-db && chown codx /var/cache/codx-db
USER codx
ENTRYPOINT ["codx-db"]
CMD ["info"]
