#!/usr/bin/env bash
# Prepare a Debian (bookworm) machine to run nbagent sandboxes: Docker engine, bubblewrap and a local
# sandbox image built without any container registry.
#
# Idempotent and non-interactive; run as root.  Every step is skipped when its result is already there.
#
#   NBAGENT_SANDBOX_IMAGE   image tag to build      (default nbagent-sandbox:bookworm)
#   NBAGENT_DOCKERD_LOG     dockerd log file        (default /var/log/nbagent-dockerd.log)
#   NBAGENT_DOCKERD_WAIT    seconds to wait for it  (default 60)
set -euo pipefail

IMAGE="${NBAGENT_SANDBOX_IMAGE:-nbagent-sandbox:bookworm}"
DOCKERD_LOG="${NBAGENT_DOCKERD_LOG:-/var/log/nbagent-dockerd.log}"
DOCKERD_WAIT="${NBAGENT_DOCKERD_WAIT:-60}"
SUITE="bookworm"

say() { printf '[setup-sandbox] %s\n' "$*"; }
die() { printf '[setup-sandbox] error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "run as root (it installs packages and starts dockerd)"
fi
export DEBIAN_FRONTEND=noninteractive

# --- packages ----------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the HTTP client's TLS test makes a certificate
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    # update the package lists only when they are missing or the install fails on stale lists
    if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
        say "apt-get update"
        apt-get update -qq
    fi
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        say "apt-get update (lists were stale)"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
else
    say "packages present: docker.io bubblewrap debootstrap openssl"
fi

# --- docker engine -----------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    say "docker engine is running"
else
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        say "starting dockerd in the background (log: $DOCKERD_LOG)"
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        # no iptables / bridge: sandboxes run with network_mode=none and the host may forbid netfilter
        nohup dockerd --iptables=false --bridge=none >>"$DOCKERD_LOG" 2>&1 </dev/null &
        disown || true
    else
        say "dockerd is starting; waiting for it"
    fi
    waited=0
    until docker info >/dev/null 2>&1; do
        if [ "$waited" -ge "$DOCKERD_WAIT" ]; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${DOCKERD_WAIT}s (see $DOCKERD_LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "docker engine is up after ${waited}s"
fi

# --- sandbox image -----------------------------------------------------------------------------
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "image $IMAGE present; reusing it"
else
    rootfs="$(mktemp -d /var/tmp/nbagent-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    say "debootstrap $SUITE (minbase + python3-minimal) into $rootfs; this takes a few minutes"
    debootstrap --variant=minbase --include=python3-minimal "$SUITE" "$rootfs" >"$rootfs.log" 2>&1 || {
        tail -n 30 "$rootfs.log" >&2
        die "debootstrap failed (log: $rootfs.log)"
    }
    rm -f "$rootfs.log"
    # trim what a sandbox never needs
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    mkdir -p "$rootfs/workspace"
    chmod 1777 "$rootfs/workspace"
    say "importing the root filesystem as $IMAGE"
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'WORKDIR /workspace' \
        --change 'CMD ["/bin/sh"]' \
        - "$IMAGE" >/dev/null
    say "image $IMAGE built ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
fi

say "done: docker $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'), $(bwrap --version 2>/dev/null || echo 'no bwrap'), image $IMAGE"
