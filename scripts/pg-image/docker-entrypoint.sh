#!/bin/bash
# Entrypoint of the locally built postgres:15-local image (see
# scripts/provision-testcontainers.sh). It is a small subset of the official
# postgres image's docker-entrypoint.sh, enough for testcontainers'
# PostgresContainer:
#   * POSTGRES_USER (default "postgres"), POSTGRES_PASSWORD (required unless
#     POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default $POSTGRES_USER),
#     POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, PGDATA;
#   * *.sh / *.sql / *.sql.gz files in /docker-entrypoint-initdb.d are run once.
# The cluster is initialised as user "postgres" and the final server is exec'ed
# so it is PID 1 and receives the stop signal.
set -Eeo pipefail

log() { echo "docker-entrypoint: $*" >&2; }

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# "docker run IMAGE -c foo=bar" means "postgres -c foo=bar", as in the official image.
if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" = 'postgres' ] && [ "$(id -u)" = '0' ]; then
	# Running as root: prepare directories, then re-exec this script as postgres
	# (postgres refuses to run as root). setpriv replaces gosu of the official image.
	mkdir -p "$PGDATA" /var/run/postgresql
	chown -R postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	chmod 3777 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --clear-groups -- "${BASH_SOURCE[0]}" "$@"
fi

if [ "$1" = 'postgres' ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	: "${POSTGRES_USER:=postgres}"
	: "${POSTGRES_DB:=$POSTGRES_USER}"
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
		log "ERROR: database is uninitialized and POSTGRES_PASSWORD is not set" \
			"(set it, or POSTGRES_HOST_AUTH_METHOD=trust)"
		exit 1
	fi

	log "initdb (user=$POSTGRES_USER db=$POSTGRES_DB)"
	# Our defaults first so that POSTGRES_INITDB_ARGS can override them.
	# --locale=C: the image carries no locale data (deterministic byte-order collation).
	# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list on purpose
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
		--encoding=UTF8 --locale=C --auth-local=trust --auth-host=trust \
		$POSTGRES_INITDB_ARGS -D "$PGDATA" >/dev/null

	# Remote (i.e. port-forwarded) clients must authenticate like with the official
	# image: scram-sha-256 (PG 15 default) or md5 if password_encryption says so.
	auth="${POSTGRES_HOST_AUTH_METHOD:-}"
	if [ -z "$auth" ]; then
		auth=scram-sha-256
		if grep -Eq "^[[:space:]]*password_encryption[[:space:]]*=[[:space:]]*'?md5" "$PGDATA/postgresql.conf"; then
			auth=md5
		fi
	fi
	printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
	printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

	# Temporary server on the unix socket only: testcontainers' readiness probe
	# (psql --host 127.0.0.1) must not succeed before the database exists.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >/dev/null

	psql_cmd=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --no-password)
	if [ "$POSTGRES_DB" != 'postgres' ]; then
		"${psql_cmd[@]}" --dbname postgres --set db="$POSTGRES_DB" -q <<<'CREATE DATABASE :"db" ;'
	fi

	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case "$f" in
		*.sh) log "running $f"; . "$f" ;;
		*.sql) log "running $f"; "${psql_cmd[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
		*.sql.gz) log "running $f"; gzip -dc "$f" | "${psql_cmd[@]}" --dbname "$POSTGRES_DB" ;;
		*) log "ignoring $f" ;;
		esac
	done

	pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
	log "init done, starting postgres"
fi

exec "$@"
