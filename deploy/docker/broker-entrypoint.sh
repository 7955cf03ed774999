#!/bin/sh
# herald-broker-entrypoint: start herald-broker as one pod of a Kubernetes StatefulSet.
#
# The broker's place in the cluster comes from the pod, so one pod template serves every broker:
#   --node-id    the pod's ordinal: herald-broker-2 -> 2
#   --cluster    tcp://<statefulset>-<i>.<service>.<namespace>.svc.<domain>:<port> for
#                i = 0 .. HERALD_BROKER_REPLICAS-1, in ordinal order (DESIGN.md §Cluster:
#                partition p is owned by broker p mod N)
#   --advertise  this pod's own name in that list (peers and edges dial it)
# then it execs herald-broker (which stays PID 1 and handles SIGTERM itself) with the arguments
# given here. Every other option comes from its HERALD_BROKER_* variable as usual.
#
# Restore: when the file <data dir>.restore.mdb exists (an `mdb_copy` of a broker's environment,
# put on the volume beside the data directory), the data directory is first moved aside to
# <data dir>.before-restore.<UTC time> and the copy becomes <data dir>/data.mdb
# (docs/kubernetes.md, "Back up and restore").
#
# Environment:
#   HERALD_BROKER_REPLICAS  N, the StatefulSet's replicas (required unless HERALD_BROKER_CLUSTER
#                           is set); N is fixed for a cluster (docs/kubernetes.md)
#   HERALD_POD_NAME         the pod's name (downward API metadata.name); default: the host name
#   HERALD_POD_NAMESPACE    the namespace (downward API); empty: names are <pod>.<service>,
#                           resolved through the pod's DNS search path
#   HERALD_BROKER_HEADLESS_SERVICE  the StatefulSet's headless Service (default herald-broker-headless)
#   HERALD_CLUSTER_DOMAIN   the cluster's DNS domain (default cluster.local)
#   HERALD_BROKER_LISTEN    its port is the port of every entry (default tcp://0.0.0.0:7400)
#   HERALD_BROKER_CLUSTER   given explicitly: used as it is, but it must list exactly
#                           HERALD_BROKER_REPLICAS brokers (when that is set too), and this pod's
#                           ordinal must index it
#   HERALD_BROKER_NODE_ID, HERALD_BROKER_ADVERTISE   given explicitly: must agree with the above
#
# A configuration that cannot be right is refused before the broker starts, with a message
# naming the variable, and exit status 2 (the binaries' status for a bad option): an ordinal not
# below HERALD_BROKER_REPLICAS (the StatefulSet was scaled without changing N), a list of another
# length, a node id other than the ordinal, a value that is not a number.
set -eu

prog=herald-broker-entrypoint

die() {
  echo "$prog: $*" >&2
  exit 2
}

# A SIGTERM before the exec below (the pod deleted while starting) ends the start cleanly; as
# PID 1 the shell would otherwise ignore it. exec resets the trap: herald-broker has its own.
trap 'echo "$prog: stopped by a signal before herald-broker started" >&2; exit 0' TERM INT

# A non-negative decimal integer without leading zeros (so sh arithmetic never reads octal).
is_count() {
  case $1 in
    '' | *[!0-9]* | 0?*) return 1 ;;
  esac
  [ "${#1}" -le 6 ]
}

# `herald-broker-entrypoint --help` (or -h) is herald-broker's own help.
for arg in "$@"; do
  case $arg in
    --help | -h) exec herald-broker "$@" ;;
    --cluster | --cluster=* | --node-id | --node-id=* | --advertise | --advertise=*)
      die "$arg on the command line: set HERALD_BROKER_CLUSTER, HERALD_BROKER_NODE_ID or HERALD_BROKER_ADVERTISE instead, so they can be checked against the pod's ordinal" ;;
  esac
done

pod=${HERALD_POD_NAME:-$(uname -n)}
ordinal=${pod##*-}
statefulset=${pod%-*}
if [ "$statefulset" = "$pod" ] || [ -z "$statefulset" ] || ! is_count "$ordinal"; then
  die "the pod name '$pod' (HERALD_POD_NAME, or the host name) does not end in -<ordinal>: run this entrypoint as a StatefulSet pod (e.g. herald-broker-2)"
fi

service=${HERALD_BROKER_HEADLESS_SERVICE:-herald-broker-headless}
domain=${HERALD_CLUSTER_DOMAIN:-cluster.local}
namespace=${HERALD_POD_NAMESPACE:-}
listen=${HERALD_BROKER_LISTEN:-tcp://0.0.0.0:7400}
port=${listen##*:}
is_count "$port" || die "HERALD_BROKER_LISTEN='$listen' has no port (expected tcp://HOST:PORT)"
case $service in '' | *[!a-z0-9-]*) die "HERALD_BROKER_HEADLESS_SERVICE='$service' is not a Service name" ;; esac

# <pod>.<service>[.<namespace>.svc.<domain>]: a StatefulSet pod's stable DNS name.
pod_host() {
  if [ -n "$namespace" ]; then
    echo "$statefulset-$1.$service.$namespace.svc.$domain"
  else
    echo "$statefulset-$1.$service"
  fi
}

replicas=${HERALD_BROKER_REPLICAS:-}
if [ -n "$replicas" ]; then
  if ! is_count "$replicas" || [ "$replicas" -lt 1 ]; then
    die "HERALD_BROKER_REPLICAS='$replicas' is not a positive integer (it must equal the StatefulSet's replicas)"
  fi
fi

cluster=${HERALD_BROKER_CLUSTER:-}
if [ -n "$cluster" ]; then
  # Explicit list: count its entries (commas + 1) and check it against N and the ordinal.
  rest=$cluster
  n=1
  while :; do
    case $rest in
      *,*) rest=${rest#*,}; n=$((n + 1)) ;;
      *) break ;;
    esac
  done
  if [ -n "$replicas" ] && [ "$n" -ne "$replicas" ]; then
    die "HERALD_BROKER_CLUSTER lists $n broker(s) but HERALD_BROKER_REPLICAS is $replicas: the list must name every broker of the StatefulSet, in ordinal order (or leave HERALD_BROKER_CLUSTER unset to build it from HERALD_BROKER_REPLICAS)"
  fi
  replicas=$n
  # This pod's own entry: the ordinal-th (0-based) of the list.
  rest=$cluster
  i=0
  while [ "$i" -lt "$ordinal" ] && [ "$i" -lt "$n" ]; do
    rest=${rest#*,}
    i=$((i + 1))
  done
  self=${rest%%,*}
elif [ -z "$replicas" ]; then
  die "HERALD_BROKER_REPLICAS is not set: set it to the StatefulSet's replicas (the number of brokers N), or give the whole list in HERALD_BROKER_CLUSTER"
fi

if [ "$ordinal" -ge "$replicas" ]; then
  die "pod $pod has ordinal $ordinal, but HERALD_BROKER_REPLICAS=$replicas names brokers 0..$((replicas - 1)): the StatefulSet has more replicas than the cluster has brokers. N is fixed when the cluster is created; scale the StatefulSet back to $replicas (docs/kubernetes.md, \"Add capacity\")"
fi

if [ -z "$cluster" ]; then
  i=0
  while [ "$i" -lt "$replicas" ]; do
    entry="tcp://$(pod_host "$i"):$port"
    cluster=${cluster:+$cluster,}$entry
    [ "$i" -eq "$ordinal" ] && self=$entry
    i=$((i + 1))
  done
fi

# The host of this pod's own entry is what it advertises.
self_host=${self#*://}
self_host=${self_host%:*}
if [ -n "${HERALD_BROKER_ADVERTISE:-}" ] && [ "$HERALD_BROKER_ADVERTISE" != "$self_host" ]; then
  die "HERALD_BROKER_ADVERTISE='$HERALD_BROKER_ADVERTISE' differs from this pod's entry '$self' in the broker list: leave it unset (it is derived from the list)"
fi
if [ -n "${HERALD_BROKER_NODE_ID:-}" ] && [ "$HERALD_BROKER_NODE_ID" != "$ordinal" ]; then
  die "HERALD_BROKER_NODE_ID='$HERALD_BROKER_NODE_ID' differs from the ordinal $ordinal of pod $pod: leave it unset (it is the ordinal)"
fi

data_dir=${HERALD_BROKER_DATA_DIR:-./herald-data}
data_dir=${data_dir%/}
if [ -f "$data_dir.restore.mdb" ]; then
  aside=none
  if [ -e "$data_dir" ]; then
    aside=$data_dir.before-restore.$(date -u +%Y%m%dT%H%M%SZ)
    mv "$data_dir" "$aside" || die "cannot move $data_dir aside to $aside for the restore"
  fi
  mkdir -p "$data_dir" && mv "$data_dir.restore.mdb" "$data_dir/data.mdb" ||
    die "cannot install $data_dir.restore.mdb as $data_dir/data.mdb"
  echo "ts=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) level=warn mod=entrypoint event=restored data_dir=$data_dir previous=$aside" >&2
  # Positions issued since the backup name seqs the restored log will assign again: new epochs
  # turn them into explicit resets (docs/kubernetes.md, "Back up and restore").
  HERALD_BROKER_RENEW_EPOCHS=true
  export HERALD_BROKER_RENEW_EPOCHS
fi

HERALD_BROKER_CLUSTER=$cluster
HERALD_BROKER_NODE_ID=$ordinal
HERALD_BROKER_ADVERTISE=$self_host
export HERALD_BROKER_CLUSTER HERALD_BROKER_NODE_ID HERALD_BROKER_ADVERTISE
echo "ts=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) level=info mod=entrypoint event=config pod=$pod node_id=$ordinal brokers=$replicas advertise=$self_host cluster=$cluster" >&2
exec herald-broker "$@"
