#!/bin/sh
# A shell worker that reports ready with systemd's own command: it sends
# READY=1 from a short-lived child process, not from the worker itself.
set -e
systemd-notify --ready
trap 'exit 0' TERM
while :; do sleep 60 & wait $!; done
