# FaceTrust HTTP service: the torch-free core + the [serve] extra, nothing else.
#   docker build -t facetrust .
#   docker build --build-arg EXTRAS=serve,heic -t facetrust .   # + HEIC photos (pillow-heif:
#       its wheel bundles LGPL-3.0 libheif/libde265 and the GPL-2.0+ x265 encoder)
#   docker run -p 8000:8000 -e FACETRUST_API_KEYS="alice:<sha256 of the key>" facetrust
# The model is the one shipped in detector/models/ (facetrust_default.onnx) unless
# FACETRUST_MODEL points at another file (e.g. a mounted volume).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

ARG EXTRAS=serve
WORKDIR /app
COPY pyproject.toml README.md ./
COPY detector ./detector
COPY serving ./serving
COPY facetrust ./facetrust
RUN pip install ".[${EXTRAS}]" \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin facetrust \
    && python -c "import serving.app, detector.analyze"

USER facetrust
ENV FACETRUST_HOST=0.0.0.0 \
    FACETRUST_PORT=8000 \
    FACETRUST_TEMP_DIR=/tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["facetrust", "serve", "--host", "0.0.0.0"]
