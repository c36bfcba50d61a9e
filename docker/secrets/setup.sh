#!/usr/bin/env bash
# Makes the secrets docker/compose.yml reads, as files only their owner can read.
# Run once before `docker compose up`; it never overwrites a secret that exists.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
rand() { head -c "$1" /dev/urandom | base64 | tr -d '/+=\n' | head -c "$2"; }
[ -f postgres-password ] || rand 32 32 > postgres-password
[ -f database-url ] || printf 'postgres://drake:%s@postgres/drake\n' "$(cat postgres-password)" > database-url
[ -f admin-token ] || printf 'drk_admin_%s\n' "$(rand 48 40)" > admin-token
[ -f webhook-secret ] || printf 'whsec_%s\n' "$(head -c 32 /dev/urandom | base64)" > webhook-secret
if [ ! -f storage-authorization ]; then
  pass=$(rand 32 32)
  printf 'Basic %s\n' "$(printf 'drake:%s' "$pass" | base64 -w0)" > storage-authorization
  printf 'drake:%s\n' "$(openssl passwd -apr1 "$pass")" > store.htpasswd
  chmod 644 store.htpasswd # nginx's workers read it
fi
# Workers join with a join token, minted by the admin once the farm runs.
[ -f join-token ] || : > join-token
if [ ! -s join-token ]; then
  cat <<MSG
Secrets written. Once 'docker compose -f docker/compose.yml up -d --scale worker=0' is healthy, mint
the workers' join token, then scale the workers up:
  curl -s -H "Authorization: Bearer \$(cat docker/secrets/admin-token)" -H 'Content-Type: application/json' \\
       -d '{"uses": 100, "ttl_seconds": 86400}' http://localhost:8600/api/v1/join-tokens \\
    | sed -E 's/.*"token":"([^"]+)".*/\1/' > docker/secrets/join-token
  docker compose -f docker/compose.yml up -d --scale worker=4
MSG
fi
