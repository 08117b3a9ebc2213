#!/bin/sh
# Run one raymerge config as a KubeRay RayJob and print the RayJob's name.
#
#   deploy/rayjob-submit.sh CONFIG [KUBECTL_OPTION...]     e.g. deploy/rayjob-submit.sh my.yaml -n data
#
# 1. the config goes into a ConfigMap of its own (raymerge-config-<time>-<random>), so runs never share one;
# 2. deploy/rayjob.yaml is created under a generated name (raymerge-xxxxx), mounting that ConfigMap;
# 3. the ConfigMap is given the RayJob as owner: `kubectl delete rayjob NAME` removes both.
# Check the config first where its inputs are reachable: `raymerge plan CONFIG`.
set -eu

usage="usage: deploy/rayjob-submit.sh CONFIG [KUBECTL_OPTION...]"
config=${1:?$usage}
shift
[ -f "$config" ] || { echo "rayjob-submit: $config: no such file" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)

stamp=$(date -u +%Y%m%d-%H%M%S)
suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
configmap="raymerge-config-$stamp-$suffix"

kubectl "$@" create configmap "$configmap" --from-file=config.yaml="$config" >/dev/null
job=$(sed "s/^\( *name: \)raymerge-config\$/\1$configmap/" "$here/rayjob.yaml" \
  | kubectl "$@" create -f - -o jsonpath='{.metadata.name}') || {
  kubectl "$@" delete configmap "$configmap" >/dev/null 2>&1 || true
  exit 1
}
uid=$(kubectl "$@" get rayjob "$job" -o jsonpath='{.metadata.uid}')
kubectl "$@" patch configmap "$configmap" --type merge -p "{\"metadata\":{\"ownerReferences\":[{\"apiVersion\":\"ray.io/v1\",\"kind\":\"RayJob\",\"name\":\"$job\",\"uid\":\"$uid\"}]}}" >/dev/null

echo "$job"
echo "rayjob-submit: started RayJob $job with config $config (ConfigMap $configmap)" >&2
echo "rayjob-submit: follow it with: kubectl get rayjob $job -w; kubectl logs -f -l job-name=$job" >&2
