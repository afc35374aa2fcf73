#!/bin/sh
# Create the MinIO bucket(s) named as arguments (the store's "bucket"), if missing.
# Runs in the minio/mc image of docker-compose.yml, with MINIO_USER and MINIO_PASSWORD set.
set -eu
mc alias set local http://minio:9000 "$MINIO_USER" "$MINIO_PASSWORD" >/dev/null
for bucket in "$@"; do
    mc mb --ignore-existing "local/$bucket"
done
