# syntax=docker/dockerfile:1
#
# DocBatch image: the `docbatch` command (API server, worker, migrations and operator tools) in
# a virtual environment at /opt/venv, run as the unprivileged user docbatch (uid and gid 10001).
# compose.yaml runs it on PostgreSQL, and docs/deployment.md explains the setup.

# Both stages must use the same base image, because the virtual environment's python is a
# symbolic link to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv

WORKDIR /build
# hatchling reads README.md for the package metadata. migrations/ and alembic.ini go into the
# wheel as docbatch/_migrations, so `docbatch db upgrade` needs no source checkout.
COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY src ./src

# A regular (non-editable) install of the project and its dependencies. lxml, argon2-cffi,
# cryptography, asyncpg and the other compiled dependencies come as manylinux wheels, so the
# slim image needs no compiler. This was checked on x86_64 with glibc 2.36 (Debian 12) using
# `pip download --only-binary=:all:`. The wheel of cryptography 50.0.2 needs glibc 2.34 or newer
# (tag manylinux_2_34).
RUN /opt/venv/bin/pip install .


FROM ${PYTHON_IMAGE}

ARG DOCBATCH_UID=10001
ARG DOCBATCH_GID=10001

# /srv/docbatch/blobs and /srv/docbatch/var exist in the image, owned by the service user, so
# that an empty named volume mounted there starts with that owner and is writable.
RUN groupadd --system --gid "${DOCBATCH_GID}" docbatch \
    && useradd --system --uid "${DOCBATCH_UID}" --gid docbatch \
        --home-dir /srv/docbatch --no-create-home --shell /usr/sbin/nologin docbatch \
    && install -d -o docbatch -g docbatch -m 0750 \
        /srv/docbatch /srv/docbatch/blobs /srv/docbatch/var

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

# A numeric user, so that runtimes that enforce "run as non-root" can check it without
# reading /etc/passwd.
USER ${DOCBATCH_UID}:${DOCBATCH_GID}
WORKDIR /srv/docbatch

EXPOSE 8000

# The slim image has no curl, so the check uses Python. It requests port 8000, which only
# `serve` opens, so the worker and migration containers in compose.yaml turn it off.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/openapi.json', timeout=4)"]

ENTRYPOINT ["docbatch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
