#!/bin/sh
# Written by drkit runbook {{ runbook_name }}: scale the workloads that mount Longhorn
# claims down before their volumes are restored, and back up afterwards.
#
#   longhorn-workloads.sh list      Deployments/StatefulSets mounting a Longhorn claim
#   longhorn-workloads.sh down      annotate each with its replicas, then scale it to 0
#   longhorn-workloads.sh is-down   0 when all are at 0 and no pod mounts a Longhorn claim
#   longhorn-workloads.sh up        scale each annotated one back, then drop the annotation
#   longhorn-workloads.sh is-up     0 when no workload carries the annotation
#
# The replicas before the restore live in the annotation {{ replicas_annotation }} on
# each workload (in the cluster, so a resumed run finds them) and in this step's output
# (in the runbook journal). Only kubectl, sh and awk are used.
set -eu
ANN='{{ replicas_annotation }}'
ANN_JP=$(printf '%s' "$ANN" | sed 's/\./\\./g')

claims() {
  # namespace/name of every claim bound to a Longhorn PV
  kubectl get pv -o jsonpath='{range .items[?(@.spec.csi.driver=="driver.longhorn.io")]}{.spec.claimRef.namespace}/{.spec.claimRef.name}{"\n"}{end}'
}

workloads() {
  # "kind namespace name replicas annotation|claim claim ...|template template ..."
  kubectl get deployments.apps,statefulsets.apps -A -o jsonpath="{range .items[*]}{.kind} {.metadata.namespace} {.metadata.name} {.spec.replicas} {.metadata.annotations.$ANN_JP}|{range .spec.template.spec.volumes[*]}{.persistentVolumeClaim.claimName} {end}|{range .spec.volumeClaimTemplates[*]}{.metadata.name} {end}{\"\\n\"}{end}"
}

list() {
  c=$(claims | tr '\n' ' ')
  workloads | awk -v claims=" $c " '
    {
      split($0, parts, "|"); split(parts[1], h, " ")
      kind = h[1]; ns = h[2]; name = h[3]
      n = split(parts[2], vols, " "); hit = 0
      for (i = 1; i <= n; i++) if (index(claims, " " ns "/" vols[i] " ")) hit = 1
      m = split(parts[3], tmpls, " ")
      for (i = 1; i <= m; i++) if (index(claims, " " ns "/" tmpls[i] "-" name "-")) hit = 1
      if (hit) print kind, ns, name, (h[4] == "" ? 1 : h[4]), h[5]
    }'
}

mounting_pods() {
  c=$(claims | tr '\n' ' ')
  kubectl get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name}|{range .spec.volumes[*]}{.persistentVolumeClaim.claimName} {end}{"\n"}{end}' |
    awk -v claims=" $c " '{ split($0, p, "|"); split(p[1], h, " "); n = split(p[2], v, " ");
      for (i = 1; i <= n; i++) if (index(claims, " " h[1] "/" v[i] " ")) { print h[1] "/" h[2]; break } }'
}

res() { if [ "$1" = Deployment ]; then echo deployment.apps/"$2"; else echo statefulset.apps/"$2"; fi; }

case "${1:-}" in
  list) list ;;
  down)
    list | while read -r kind ns name replicas before; do
      if [ -z "$before" ]; then
        echo "$kind $ns/$name had $replicas replica(s): scaling to 0"
        kubectl -n "$ns" annotate "$(res "$kind" "$name")" --overwrite "$ANN=$replicas" >/dev/null
      else
        echo "$kind $ns/$name: replicas before the restore already recorded ($before)"
      fi
      kubectl -n "$ns" scale "$(res "$kind" "$name")" --replicas=0 >/dev/null
    done ;;
  is-down)
    busy=$(list | awk '$4 != 0')
    [ -z "$busy" ] || { echo "not at 0 yet: $busy"; exit 1; }
    pods=$(mounting_pods)
    [ -z "$pods" ] || { echo "pods still mounting Longhorn claims: $pods"; exit 1; } ;;
  up)
    workloads | awk '{ split($0, p, "|"); split(p[1], h, " "); if (h[5] != "") print h[1], h[2], h[3], h[5] }' |
      while read -r kind ns name before; do
        echo "$kind $ns/$name: back to $before replica(s)"
        kubectl -n "$ns" scale "$(res "$kind" "$name")" --replicas="$before" >/dev/null
        kubectl -n "$ns" annotate "$(res "$kind" "$name")" "$ANN-" >/dev/null
      done ;;
  is-up)
    left=$(workloads | awk '{ split($0, p, "|"); split(p[1], h, " "); if (h[5] != "") print h[2] "/" h[3] }')
    [ -z "$left" ] || { echo "still scaled down by the rebuild: $left"; exit 1; } ;;
  *) echo "usage: $0 list|down|is-down|up|is-up" >&2; exit 2 ;;
esac
