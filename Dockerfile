# The codx-db command line in a container (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md relstorage.conf ./
COPY db ./db
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system --create-home codx
USER codx
ENTRYPOINT ["codx-db"]
CMD ["info"]
