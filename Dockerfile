# One image for every service role (api, worker, sweeper, migrate); the command picks the role.
# CPU build:  docker build -t gas .
# GPU build:  docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t gas-gpu .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app GAS_DATA_DIR=/data GAS_DATASETS_ROOT=/datasets

WORKDIR /app
# dependencies first (cached layer): torch from the chosen index, the rest from PyPI
COPY pyproject.toml ./
RUN pip install --index-url "$TORCH_INDEX_URL" torch \
 && python -c "import tomllib; d=tomllib.load(open('pyproject.toml','rb')); print('\n'.join(x for x in d['project']['dependencies'] if not x.startswith('torch')))" > /tmp/req.txt \
 && pip install -r /tmp/req.txt && rm /tmp/req.txt

COPY core ./core
COPY storage ./storage
COPY migrations ./migrations
COPY api ./api
COPY worker ./worker
COPY client ./client

RUN useradd --create-home --uid 1000 gas && mkdir -p /data /datasets && chown gas /data
USER gas
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["python", "-m", "api"]
