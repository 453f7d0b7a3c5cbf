#!/bin/sh
# mailbridge's container entrypoint. It only picks the program and then `exec`s it, so the
# program replaces this shell: mailbridge is PID 1 and receives `docker stop`'s SIGTERM.
#
#   (no arguments)            mailbridge run
#   run | health | db upgrade  mailbridge run | mailbridge health | ...   (any subcommand)
#   -c FILE run               mailbridge -c FILE run                      (options first)
#   sh | python ...           that program (anything found on PATH), for debugging
#
# The schema upgrade at start is the daemon's own setting (database.upgrade_on_start, true
# in this image), so a plain `docker run IMAGE` upgrades and starts in one process.
set -eu

if [ "$#" -eq 0 ]; then
    set -- run
fi

case "$1" in
    mailbridge) ;;
    -*) set -- mailbridge "$@" ;;
    *)
        if ! command -v "$1" >/dev/null 2>&1; then
            set -- mailbridge "$@"
        fi
        ;;
esac

exec "$@"
