# One image for the migrate step, the API, the workers, beat and flower. Blobs go to an S3 bucket
# (ACTIVESEG_STORAGE_URL=s3://...; MinIO in docker-compose.yml), so containers keep no state.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# torch==2.13.0 from the default index is a CUDA build; pass a CPU wheel index for small images:
#   docker compose build --build-arg TORCH_INDEX_URL=<your CPU wheel index>
ARG TORCH_INDEX_URL=""
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY activeseg ./activeseg
COPY migrations ./migrations
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"; fi \
 && pip install -e . flower
RUN useradd --create-home activeseg && mkdir -p /data && chown activeseg /data
USER activeseg
ENV ACTIVESEG_DATA_DIR=/data
EXPOSE 8000
CMD ["uvicorn", "activeseg.api.main:app", "--host", "0.0.0.0", "--port", "8000"]
