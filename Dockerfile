# The feedforge API image: `docker compose up` runs it beside Redis (docker-compose.yml).
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

# The OpenMP runtime: LightGBM's and implicit's wheels link the system libgomp, which the slim
# image lacks (without it the API dies at import: "libgomp.so.1: cannot open shared object file").
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# The runtime dependencies only (no extras: the image neither tests nor benchmarks). The CPU
# build of torch (the pinned version) keeps the image free of CUDA libraries.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu .

RUN useradd --create-home --uid 1000 feedforge
USER feedforge

EXPOSE 8000
ENTRYPOINT ["feedforge"]
CMD ["serve", "--workdir", "/work", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
