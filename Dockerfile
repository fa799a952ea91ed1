# The codx-db command line in a container (used by docker-compose.yml).
# After pulling new code: `docker compose build` (or `docker compose run --build ...`).
FROM python:3.11-slim

# Reproducible images: every dependency at the exact version and hash of requirements.lock,
# in a virtual environment of its own (the image's Python stays as shipped). This layer only
# changes with the lock, so code changes rebuild in seconds. Regenerate the lock with pip-tools:
#   pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
#       --no-emit-find-links --output-file requirements.lock pyproject.toml
COPY requirements.lock /tmp/requirements.lock
RUN python3 -m venv /opt/codx-db \
    && /opt/codx-db/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes -r /tmp/requirements.lock
ENV PATH=/opt/codx-db/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md relstorage.conf ./
COPY db ./db
COPY migrations ./migrations
# --no-deps --no-build-isolation: nothing but the locked packages (setuptools included) is used.
# The persistent-cache directory belongs to the user that runs codx-db: a new named volume
# mounted there takes this ownership.
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation . \
    && rm -rf build *.egg-info \
    && useradd --system --create-home --uid 999 codx \
    && mkdir -p /var/cache/codx-db && chown codx /var/cache/codx-db
USER codx
ENTRYPOINT ["codx-db"]
CMD ["info"]
