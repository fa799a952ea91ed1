#!/usr/bin/env bash
# Provision testcontainers (Python) and docker-compose on a machine with no Docker
# engine and no reachable image registry (only Debian + PyPI mirrors): rootful podman
# serves a Docker-compatible API, and two base images are built locally from Debian
# packages: PostgreSQL 15 (postgres:15) and a python:3.11-slim stand-in (for the
# Dockerfile). Each blocker met on the way is explained where it is worked around below.
#
# Usage (as root):
#   eval "$(bash scripts/provision-testcontainers.sh)"   # provision + export env
#   bash scripts/provision-testcontainers.sh --stop      # stop the podman API service we started
#   bash scripts/provision-testcontainers.sh --clean     # remove what killed test runs left behind
#
# Only the `export` lines go to stdout; every log line goes to stderr.
# Idempotent: a second run only checks things (about a second).
#
# Environment knobs (all optional):
#   CODX_PG_IMAGE_METHOD=auto|hostcopy|debootstrap  how to build the images (default auto:
#                            copy the host's own Debian packages when installed, else debootstrap)
#   CODX_PG_IMAGE_REBUILD=1  rebuild the images even if they exist
set -Eeuo pipefail

# fd 3 = the real stdout, reserved for the export lines; everything else -> stderr.
exec 3>&1 1>&2

readonly SOCK_PATH=/run/podman/podman.sock
readonly SOCK_URL="unix://$SOCK_PATH"
readonly PID_FILE=/run/podman/codx-service.pid
readonly SERVICE_LOG=/run/podman/codx-service.log
readonly PG_IMAGE=postgres:15-local
readonly PG_ALIASES=(docker.io/library/postgres:15)
# The Dockerfile's base (FROM python:3.11-slim): the same Python minor version, from Debian.
readonly PY_IMAGE=python:3.11-slim-local
readonly PY_ALIASES=(docker.io/library/python:3.11-slim)
readonly PG_MAJOR=15
readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly ENTRYPOINT_SRC="$SCRIPT_DIR/pg-image/docker-entrypoint.sh"
readonly CONF_DROPIN=/etc/containers/containers.conf.d/50-codx-testcontainers.conf

log() { printf '[provision-testcontainers] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'rc=$?; log "ERROR: command failed (exit $rc) at line $LINENO: $BASH_COMMAND"; exit $rc' ERR

ping_api() { curl -fsS --max-time 2 --unix-socket "$SOCK_PATH" http://d/_ping >/dev/null 2>&1; }

# PID from the pid file if that process is still our podman API service.
service_pid() {
	local pid
	[ -s "$PID_FILE" ] || return 1
	pid=$(<"$PID_FILE")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "podman system service" || return 1
	echo "$pid"
}

stop_service() {
	local pid
	if ! pid=$(service_pid); then
		log "no podman service started by this script is running"
		rm -f "$PID_FILE"
		return 0
	fi
	log "stopping podman system service (pid $pid)"
	kill -TERM "$pid"
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "still alive after 5 s, sending SIGKILL to $pid"
		kill -KILL "$pid" || true
	fi
	rm -f "$PID_FILE"
	log "stopped"
}

clean_containers() {
	# Ryuk (testcontainers' reaper) cannot run here, so containers of a test process
	# that was killed before its `with` block ended stay behind; they carry this label.
	local ids
	ids=$(podman ps -aq --filter label=org.testcontainers=true)
	if [ -n "$ids" ]; then
		log "removing leftover testcontainers containers: $(echo $ids)"
		# shellcheck disable=SC2086
		podman rm -f -v $ids >/dev/null
	else
		log "no leftover testcontainers containers"
	fi
	# Compose stacks of tests/test_compose.py (projects codxtest*) of a killed test run.
	ids=$(podman ps -a --format '{{.ID}} {{.Names}}' | awk '$2 ~ /^codxtest/ {print $1}')
	# shellcheck disable=SC2086
	[ -z "$ids" ] || { log "removing leftover compose test containers"; podman rm -f -v $ids >/dev/null; }
	ids=$(podman volume ls --format '{{.Name}}' | grep '^codxtest' || true)
	# shellcheck disable=SC2086
	[ -z "$ids" ] || { log "removing leftover compose test volumes"; podman volume rm -f $ids >/dev/null; }
	ids=$(podman network ls --format '{{.Name}}' | grep '^codxtest' || true)
	# shellcheck disable=SC2086
	[ -z "$ids" ] || { log "removing leftover compose test networks"; podman network rm -f $ids >/dev/null; }
	ids=$(podman images --format '{{.Repository}}:{{.Tag}}' | grep -E '^localhost/(codxtest|codx-db-test:)' || true)
	# shellcheck disable=SC2086
	[ -z "$ids" ] || { log "removing leftover compose test images"; podman rmi -f $ids >/dev/null; }
}

case "${1:-}" in
--stop) stop_service; exit 0 ;;
--clean) command -v podman >/dev/null || exit 0; clean_containers; exit 0 ;;
-h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
'') ;;
*) die "unknown argument: $1 (use --stop, --clean or no argument)" ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (rootful podman)"
[ -f "$ENTRYPOINT_SRC" ] || die "missing $ENTRYPOINT_SRC"
T0=$(date +%s.%N)

# ---------------------------------------------------------------------------
# 1. Packages. apt-get only runs when something is missing (a second run is quick).
# ---------------------------------------------------------------------------
pkgs=()
command -v podman >/dev/null || pkgs+=(podman)
command -v curl >/dev/null || pkgs+=(curl)                      # to ping the API socket
command -v docker-compose >/dev/null || pkgs+=(docker-compose)  # tests/test_compose.py drives the stack with it

# Two images, each built from the host's own Debian packages when they are installed (seconds),
# else with debootstrap from the Debian mirror (about a minute each).
py_pkgs_installed() {
	local p
	for p in python3.11-minimal libpython3.11-stdlib python3.11-venv python3-pip-whl python3-setuptools-whl; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || return 1
	done
}
choose_method() { # $1 = "can copy from the host" test result (0/1)
	local method=${CODX_PG_IMAGE_METHOD:-auto}
	if [ "$method" = auto ]; then
		if [ "$1" = 0 ]; then method=hostcopy; else method=debootstrap; fi
	fi
	[ "$method" = hostcopy ] || [ "$method" = debootstrap ] || die "CODX_PG_IMAGE_METHOD must be auto, hostcopy or debootstrap"
	echo "$method"
}
if [ -x /usr/lib/postgresql/$PG_MAJOR/bin/postgres ] && [ -x /usr/lib/postgresql/$PG_MAJOR/bin/psql ]; then
	pg_method=$(choose_method 0)
else
	pg_method=$(choose_method 1)
fi
if py_pkgs_installed; then py_method=$(choose_method 0); else py_method=$(choose_method 1); fi
image_missing() {
	! command -v podman >/dev/null || [ "${CODX_PG_IMAGE_REBUILD:-0}" = 1 ] || ! podman image exists "$1"
}
need_pg=0 need_py=0
image_missing "$PG_IMAGE" && need_pg=1
image_missing "$PY_IMAGE" && need_py=1
if { [ "$need_pg" = 1 ] && [ "$pg_method" = debootstrap ]; } || { [ "$need_py" = 1 ] && [ "$py_method" = debootstrap ]; }; then
	command -v debootstrap >/dev/null || pkgs+=(debootstrap)
fi

if [ ${#pkgs[@]} -gt 0 ]; then
	log "installing Debian packages: ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	export NEEDRESTART_SUSPEND=1 # needrestart's apt hook is noisy and useless here
	apt-get update -qq || die "apt-get update failed"
	apt-get install -y -qq "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed"
fi
command -v podman >/dev/null || die "podman is still not on PATH after installing it"

# ---------------------------------------------------------------------------
# 2. containers.conf. A drop-in file of our own, rewritten only when its content
#    changes, so the distribution's /usr/share/containers/containers.conf and any
#    admin /etc/containers/containers.conf stay untouched.
# ---------------------------------------------------------------------------
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
conf_content="# Written by codx-db scripts/provision-testcontainers.sh (the reasons are in that script)
[containers]
# crun sets RLIMIT_NOFILE/RLIMIT_NPROC of the container to podman's defaults
# (1048576 / 4194304) and fails with 'setrlimit ...: Operation not permitted'
# because this sandbox lacks CAP_SYS_RESOURCE and cannot raise hard limits.
# nofile = our own hard limit; podman lowers its own nproc to 32768.
default_ulimits = [
  \"nofile=$nofile:$nofile\",
  \"nproc=32768:32768\",
]

[engine]
# No systemd (PID 1 is not systemd): manage cgroups directly.
cgroup_manager = \"cgroupfs\"
# Each exec (testcontainers' readiness probe runs psql via exec) leaves a conmon
# process for exit_command_delay seconds (default 300): keep that short.
exit_command_delay = 10
"
if [ ! -f "$CONF_DROPIN" ] || [ "$(cat "$CONF_DROPIN")" != "${conf_content%$'\n'}" ]; then
	log "writing $CONF_DROPIN (nofile=$nofile, nproc=32768, cgroupfs, exit_command_delay=10)"
	mkdir -p "$(dirname "$CONF_DROPIN")"
	printf '%s' "$conf_content" >"$CONF_DROPIN"
fi

# ---------------------------------------------------------------------------
# 3. cgroups. In the "hybrid" layout (v1 controllers under /sys/fs/cgroup/<name>,
#    a cgroup2 tree at /sys/fs/cgroup/unified) crun refuses to work while any
#    controller is attached to the v2 side: "cgroups in hybrid mode not supported,
#    drop all controllers from cgroupv2". Mounting each such controller as v1
#    moves it off the v2 hierarchy. Mounts do not survive a reboot, so this is
#    checked on every run (cheap).
# ---------------------------------------------------------------------------
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
	for ctrl in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
		log "cgroup hybrid mode: mounting controller '$ctrl' as cgroup v1 at /sys/fs/cgroup/$ctrl"
		mkdir -p "/sys/fs/cgroup/$ctrl"
		mountpoint -q "/sys/fs/cgroup/$ctrl" ||
			mount -t cgroup -o "$ctrl" cgroup "/sys/fs/cgroup/$ctrl" ||
			die "cannot mount cgroup v1 controller $ctrl (needs CAP_SYS_ADMIN)"
	done
	left=$(cat /sys/fs/cgroup/unified/cgroup.controllers)
	[ -z "$left" ] || die "cgroup v2 still has controllers attached ($left); crun will refuse to run"
fi
# A pure cgroup v2 machine (/sys/fs/cgroup/cgroup.controllers) or pure v1 needs nothing.

# ---------------------------------------------------------------------------
# 4. The base images, built without any registry.
# ---------------------------------------------------------------------------

# Canonical path of a host file: directories resolved (usr-merge: /lib/x -> /usr/lib/x),
# the last component kept as is (it may be a symlink we want to copy as a symlink).
# Resolved directories are cached: this runs for ~2000 files.
declare -A CANON_DIR=()
canon() {
	local d=${1%/*}
	[ -n "${CANON_DIR[$d]+x}" ] || CANON_DIR[$d]=$(readlink -f "$d")
	printf '%s/%s\n' "${CANON_DIR[$d]}" "${1##*/}"
}

# hostcopy ROOTFS PKG... : copy the files of these installed host packages (docs, man pages,
# translations skipped), the extra paths listed on stdin, the shared libraries of every ELF
# file among them and the targets of their symlinks into a usr-merged ROOTFS, as on bookworm.
hostcopy() {
	local rootfs=$1 pkg f magic
	shift
	local list="$rootfs.files"
	for pkg in "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' ||
			die "host package $pkg is not installed (needed to copy it; try CODX_PG_IMAGE_METHOD=debootstrap)"
	done
	{
		dpkg -L "$@" | grep '^/' | grep -Ev '^/usr/share/(doc|man|info|locale|lintian|bug)/|^/usr/share/zoneinfo/right/|/llvmjit|/bitcode(/|$)'
		cat
	} | sort -u >"$list.raw"
	# JIT (llvmjit.so + bitcode) is left out on purpose: it would pull libLLVM (~100 MB).
	# Without llvmjit.so PostgreSQL silently runs without JIT.

	local elfs=()
	while IFS= read -r f; do
		[ -f "$f" ] && [ ! -L "$f" ] || continue
		magic=
		IFS= read -r -N4 magic <"$f" 2>/dev/null || true # no fork per file: ~2000 files
		[ "$magic" = $'\x7fELF' ] && elfs+=("$f")
	done <"$list.raw"
	{
		cat "$list.raw"
		ldd "${elfs[@]}" 2>/dev/null | awk '/^\t/ && /=> \// {print $3} /^\t\// {print $1}' || true
	} | sort -u >"$list.all"
	# Directories are skipped (tar creates parents itself); files and symlinks are
	# kept, and what a symlink points to is copied too (libfoo.so.5 -> libfoo.so.5.1).
	while IFS= read -r f; do
		if [ -L "$f" ]; then
			[ -d "$f" ] && continue
			canon "$f"
			readlink -f "$f"
		elif [ -f "$f" ]; then
			canon "$f"
		fi
	done <"$list.all" | sort -u | sed 's|^/||' >"$list"

	mkdir -p "$rootfs"/usr/{bin,sbin,lib,lib64}
	ln -s usr/bin "$rootfs/bin"
	ln -s usr/sbin "$rootfs/sbin"
	ln -s usr/lib "$rootfs/lib"
	ln -s usr/lib64 "$rootfs/lib64"
	tar -C / --no-recursion -cf - -T "$list" | tar -C "$rootfs" -xf -
	mkdir -p "$rootfs"/{etc,tmp,run,var/tmp,root,dev,proc,sys}
	chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
	ln -s ../run "$rootfs/var/run"
	printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
	ln -sf /usr/share/zoneinfo/Etc/UTC "$rootfs/etc/localtime"
	rm -f "$list" "$list.raw" "$list.all"
}

apt_mirror() {
	# The Debian mirror apt itself uses (deb822 *.sources or one-line sources.list); other
	# repositories (nodesource, cloud-sdk, ...) and the security archive are skipped.
	local m
	m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
		grep -E '/debian/?$' | head -n1 || true)
	[ -n "$m" ] || m=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '{for (i=2;i<=NF;i++) if ($i !~ /^\[/) {print $i; break}}' | grep -E '/debian/?$' | head -n1 || true)
	echo "${m:-http://deb.debian.org/debian}"
}

# debootstrap_rootfs ROOTFS PKGS(comma-separated): a minimal Debian of the host's release.
debootstrap_rootfs() {
	local rootfs=$1 include=$2 mirror suite
	mirror=$(apt_mirror)
	suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
	log "building a rootfs with debootstrap $suite from $mirror (~1 min): $include"
	debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
		die "debootstrap failed, see $rootfs.log"
	rm -rf "$rootfs.log" "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
		"$rootfs"/usr/share/{doc,man,info,locale}/*
}

rootfs_postgres() {
	local rootfs=$1
	if [ "$pg_method" = hostcopy ]; then
		log "building the PostgreSQL rootfs from the host's own PostgreSQL $PG_MAJOR files"
		# postgresql-client-common (Debian's perl pg_wrapper) is not wanted: the real psql
		# comes first on PATH from /usr/lib/postgresql/15/bin.
		{
			echo /usr/bin/setpriv # drops root -> postgres in the entrypoint (gosu of the official image)
			echo /usr/bin/grep    # the entrypoint greps postgresql.conf
			echo /usr/lib/locale/C.utf8
		} | hostcopy "$rootfs" postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR libpq5 tzdata bash dash coreutils gzip
		# Same ids as the official image (999). Nothing else in the image needs NSS.
		printf 'root:x:0:0:root:/root:/bin/bash\npostgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n' >"$rootfs/etc/passwd"
		printf 'root:x:0:\npostgres:x:999:\n' >"$rootfs/etc/group"
	else
		debootstrap_rootfs "$rootfs" postgresql-$PG_MAJOR
		# postgresql-common created a "main" cluster in the chroot: the entrypoint makes its own.
		# JIT is removed as with hostcopy, so both images behave the same (no JIT).
		rm -rf "$rootfs/var/lib/postgresql/$PG_MAJOR" "$rootfs/etc/postgresql/$PG_MAJOR" \
			"$rootfs/usr/lib/postgresql/$PG_MAJOR/lib/bitcode" "$rootfs/usr/lib/postgresql/$PG_MAJOR/lib"/llvmjit*
	fi
	mkdir -p "$rootfs"/{run/postgresql,var/lib/postgresql,docker-entrypoint-initdb.d}
	install -D -m 0755 "$ENTRYPOINT_SRC" "$rootfs/usr/local/bin/docker-entrypoint.sh"
	# Smoke test before importing: the binaries must find their libraries.
	chroot "$rootfs" /usr/lib/postgresql/$PG_MAJOR/bin/postgres --version >/dev/null ||
		die "postgres does not run inside the built rootfs (missing library?)"
	chroot "$rootfs" /usr/lib/postgresql/$PG_MAJOR/bin/psql --version >/dev/null ||
		die "psql does not run inside the built rootfs"
	IMPORT_CHANGES=(
		--change 'ENTRYPOINT ["docker-entrypoint.sh"]'
		--change 'CMD ["postgres"]'
		--change "ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		--change 'ENV PGDATA=/var/lib/postgresql/data'
		--change 'ENV TZ=Etc/UTC'
		--change 'EXPOSE 5432'
		--change 'STOPSIGNAL SIGINT'
	)
}

# What the Dockerfile needs from python:3.11-slim: python3 / python with the venv module (pip
# comes from Debian's bundled wheel), CA certificates for pip, useradd, a shell.
rootfs_python() {
	local rootfs=$1
	if [ "$py_method" = hostcopy ]; then
		log "building the Python rootfs from the host's own Debian Python 3.11 packages"
		{
			echo /etc/login.defs # useradd reads it
		} | hostcopy "$rootfs" python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11 \
			python3-minimal libpython3-stdlib python3 python3.11-venv python3-venv python3-pip-whl \
			python3-setuptools-whl ca-certificates passwd bash dash coreutils grep sed tzdata \
			libc6 libgcc-s1 libstdc++6 # whole: wheels dlopen libpthread.so.0 etc., which no ldd above names
		printf 'root:x:0:0:root:/root:/bin/bash\n' >"$rootfs/etc/passwd"
		printf 'root:x:0:\n' >"$rootfs/etc/group"
		printf 'root:*::0:99999:7:::\n' >"$rootfs/etc/shadow"
		printf 'root:*::\n' >"$rootfs/etc/gshadow"
		chmod 640 "$rootfs/etc/shadow" "$rootfs/etc/gshadow"
	else
		debootstrap_rootfs "$rootfs" python3,python3-venv,ca-certificates
	fi
	# pip in `docker build` reaches PyPI through this machine's network, which may pass a TLS
	# proxy only the host's CA bundle trusts (debootstrap's stock bundle then fails with
	# CERTIFICATE_VERIFY_FAILED): the stand-in trusts what the host trusts.
	install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
	ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python" 2>/dev/null || {
		mkdir -p "$rootfs/usr/local/bin"
		ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
	}
	chroot "$rootfs" /usr/bin/python3 -c 'import venv, ensurepip, ssl, sqlite3' ||
		die "python3 does not run inside the built rootfs (missing module or library?)"
	IMPORT_CHANGES=(
		--change 'CMD ["python3"]'
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
		--change 'ENV LANG=C.UTF-8'
	)
}

# build_image KIND IMAGE METHOD: build the rootfs with rootfs_KIND, import it as IMAGE.
build_image() {
	local kind=$1 image=$2 method=$3 rootfs t0
	t0=$(date +%s.%N)
	BUILD_DIR=$(mktemp -d /var/tmp/codx-$kind-image.XXXXXX)
	trap 'rm -rf "$BUILD_DIR"' EXIT # also on failure
	rootfs="$BUILD_DIR/rootfs"
	mkdir -p "$rootfs"
	"rootfs_$kind" "$rootfs"
	log "importing the rootfs as $image"
	# One --change per label: `LABEL a=b c=d` in a single --change makes one label "a" = "b c=d".
	tar -C "$rootfs" -cf - . | podman import "${IMPORT_CHANGES[@]}" \
		--change "LABEL org.codx.built-by=scripts/provision-testcontainers.sh" \
		--change "LABEL org.codx.method=$method" \
		--message "codx-db local $kind base image ($method)" \
		- "$image" >/dev/null
	rm -rf "$BUILD_DIR"
	trap - EXIT
	log "image $image built in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s" \
		"($(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%d MB", $1/1e6}'))"
}

# ensure_image KIND IMAGE METHOD NEED ALIAS...: build if needed, then tag the aliases (cheap,
# every run): code asking for "postgres:15" or "python:3.11-slim" resolves to
# docker.io/library/...; with that tag present nothing is pulled.
ensure_image() {
	local kind=$1 image=$2 method=$3 need=$4 old_id alias
	shift 4
	old_id=
	if [ "$need" = 1 ]; then
		old_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
		build_image "$kind" "$image" "$method"
	fi
	for alias in "$@"; do
		if [ "$(podman image inspect --format '{{.Id}}' "$alias" 2>/dev/null)" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
			log "tagging $image as $alias"
			podman tag "$image" "$alias"
		fi
	done
	# After a forced rebuild the previous image is left untagged: drop it (unless a
	# container still uses it).
	if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
		podman rmi "$old_id" >/dev/null 2>&1 && log "removed the previous image ${old_id:0:12}" || true
	fi
}

ensure_image postgres "$PG_IMAGE" "$pg_method" "$need_pg" "${PG_ALIASES[@]}"
ensure_image python "$PY_IMAGE" "$py_method" "$need_py" "${PY_ALIASES[@]}"

# ---------------------------------------------------------------------------
# 5. The Docker-compatible API: `podman system service` on the rootful socket.
# ---------------------------------------------------------------------------
if ping_api; then
	log "podman API already answers on $SOCK_PATH"
else
	mkdir -p "$(dirname "$SOCK_PATH")"
	if pid=$(service_pid); then
		log "our podman service (pid $pid) is running but does not answer yet, waiting"
	else
		# A socket file left by a dead service would make the new one fail to bind.
		[ -S "$SOCK_PATH" ] && rm -f "$SOCK_PATH"
		log "starting podman system service on $SOCK_URL (log: $SERVICE_LOG)"
		# setsid: own session, so it outlives the caller's shell. All fds (including
		# fd 3 = our stdout) are redirected: otherwise `eval "$(...)"` would wait for
		# the service to close the pipe and never return.
		setsid podman system service --time=0 "$SOCK_URL" </dev/null >"$SERVICE_LOG" 2>&1 3>&- &
		pid=$!
		echo "$pid" >"$PID_FILE"
	fi
	for _ in $(seq 100); do
		ping_api && break
		kill -0 "$pid" 2>/dev/null || die "podman system service exited; see $SERVICE_LOG"
		sleep 0.1
	done
	ping_api || die "podman API did not answer on $SOCK_PATH within 10 s; see $SERVICE_LOG"
	log "podman API answers (service pid $pid; stop it with: bash $0 --stop)"
fi

log "done in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"

# ---------------------------------------------------------------------------
# 6. The environment for the tests, on the real stdout.
#    TESTCONTAINERS_RYUK_DISABLED: the reaper image cannot be pulled (no registry).
#    TESTCONTAINERS_CONNECTION_MODE=docker_host: /.dockerenv makes testcontainers
#    believe it runs inside a container and look up a gateway IP it cannot find
#    (KeyError 'HostConfig'); ports are published on this host, so connect here.
# ---------------------------------------------------------------------------
cat >&3 <<EOF
export DOCKER_HOST=$SOCK_URL
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host
EOF
