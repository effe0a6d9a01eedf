# One image for every function (Cloud Run, or any container platform). The function is
# chosen at run time with EDGEFN_FUNCTION (its folder name, e.g. upload_media), or baked in:
#   docker build --build-arg FUNCTION=webhooks -t edgefn-webhooks .
# Dependencies are exactly the locked, hash-checked ones the tests ran against.
# The Python is the deploy target's (edgefn/target.py); the architecture is x86_64, the only
# one Cloud Run runs (Debian bookworm's glibc 2.36 loads every wheel the Lambda zips load).
FROM --platform=linux/amd64 python:3.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --require-hashes --only-binary=:all: -r requirements/runtime.lock

COPY functions/ functions/
COPY shared/ shared/
RUN python -m compileall -q functions shared \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin edgefn

ARG FUNCTION=""
ENV EDGEFN_FUNCTION=${FUNCTION} \
    PORT=8080

USER 10001
EXPOSE 8080

# One async worker per container: Cloud Run scales containers, and each serves up to its
# containerConcurrency (80) requests at once; --limit-concurrency sheds load beyond that.
# --proxy-headers: Cloud Run's front end sets X-Forwarded-For.
CMD exec uvicorn "functions.${EDGEFN_FUNCTION}.handler:app" --host 0.0.0.0 --port "${PORT}" \
    --workers 1 --limit-concurrency 100 --timeout-keep-alive 620 --no-access-log \
    --proxy-headers --forwarded-allow-ips='*'
