#!/bin/sh
# Container entrypoint for every Modelport process (deploy/Dockerfile, deploy/Dockerfile.gpu).
# umask 002: the artifact root is shared by the web server and the workers (uid 10001) and by the
# conversion worker (root); with the root's setgid group, what either creates stays writable to
# the group "modelport".
set -eu
umask 0002
root="${MODELPORT_ARTIFACT_ROOT:-/var/lib/modelport/artifacts}"
if [ "$(id -u)" = 0 ] && [ -d "$root" ]; then
  # A volume created before the image set these (or by another tool) gets them here.
  chgrp modelport "$root" && chmod 2775 "$root"
fi
exec "$@"
