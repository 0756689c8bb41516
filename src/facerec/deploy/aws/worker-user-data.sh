#!/bin/bash
# First boot of an app-tier instance (cloud-init runs user data once per instance), rendered by
# `facerec aws provision`. The AMI carries facerec in /opt/facerec/venv; this writes the deployment's
# settings and enables the worker unit, so every later start of the instance (the scaler's scale-out)
# starts the worker and every stop sends it SIGTERM. No credentials here: the instance profile has them.
set -euo pipefail

install -d -m 0755 /etc/facerec
# Quoted delimiter: the settings are written verbatim, never expanded by the shell.
cat > /etc/facerec/facerec.env <<'FACEREC_SETTINGS'
${environment}
FACEREC_SETTINGS
chmod 0644 /etc/facerec/facerec.env

if ! id -u facerec >/dev/null 2>&1; then
  useradd --system --home-dir /opt/facerec --shell /usr/sbin/nologin facerec
fi

# The unit ships inside the installed package; one the AMI already put in /etc/systemd/system wins.
unit=/etc/systemd/system/facerec-worker.service
if [ ! -e "$unit" ]; then
  shipped=$(/opt/facerec/venv/bin/python -c \
    'from importlib.resources import files; print(files("facerec") / "deploy/systemd/facerec-worker.service")')
  install -m 0644 "$shipped" "$unit"
fi

systemctl daemon-reload
systemctl enable --now facerec-worker.service
