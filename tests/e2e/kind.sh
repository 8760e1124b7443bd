#!/usr/bin/env bash
# End to end on a real cluster, sized for a 4-vCPU / 16 GB GitHub runner (tests/chart/test_kind_budget.py
# sums every request): a kind cluster, the three images built from images/ and loaded into it (the
# replica image carries the tiny model: no hub download), `helm upgrade --install` with
# tests/e2e/values-kind.yaml, manifests/examples/tiny-kind.yaml, then through the gateway: a chat
# completion plain and streamed, 401 for a bad key, 429 for a burst on a key limited to 3 requests a
# minute; `kubectl scale md/tiny --replicas=2`, `helm test`, and a delete that must take every child
# with it. Any failure dumps describe, events and logs.
#
# Run from anywhere:  tests/e2e/kind.sh     (.github/workflows/e2e-kind.yml runs exactly this)
# Needs docker, kind, kubectl, helm, curl and python3 >= 3.11. Environment:
#   KIND_CLUSTER (rayleigh)  an existing cluster of that name is reused, else created
#   KIND_NODE_IMAGE (kindest/node:v1.34.0)  SKIP_BUILD=1  reuse images already loaded
#   RAYLEIGH (.venv/bin/rayleigh if present, else installed into a temporary venv)  for `rayleigh keys`
#   GATEWAY_PORT (18080)  local port of the gateway's port-forward
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

CLUSTER="${KIND_CLUSTER:-rayleigh}"
NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
PORT="${GATEWAY_PORT:-18080}"
NS=rayleigh-system
MD_NS=default
TAG=e2e # the tag tests/e2e/values-kind.yaml names
VALUES=tests/e2e/values-kind.yaml
MODEL=manifests/examples/tiny-kind.yaml
SERVED=tiny-qwen
SELECTOR=serving.rayleigh.dev/model-deployment=tiny
WORK="$(mktemp -d)"
PF_PID=""
DUMPED=""

log() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() {
	echo "FAIL: $*" >&2
	return 1
}

dump() {
	[ -n "$DUMPED" ] && return 0
	DUMPED=1
	set +e
	log "failure at line ${1:-?}: cluster state, events and logs"
	kubectl get nodes -o wide
	kubectl get all,md,cm,hpa,pdb,networkpolicy -A -o wide
	kubectl describe md -A
	kubectl -n "$MD_NS" describe pods -l "$SELECTOR"
	kubectl -n "$NS" describe pods
	kubectl describe node
	kubectl get events -A --sort-by=.lastTimestamp | tail -150
	kubectl -n "$NS" logs deploy/rayleigh-operator --tail=500
	kubectl -n "$NS" logs deploy/rayleigh-gateway --all-containers --tail=300
	kubectl -n "$NS" logs deploy/rayleigh-redis --tail=50
	for pod in $(kubectl -n "$MD_NS" get pods -l "$SELECTOR" -o name); do
		echo "== $pod"
		kubectl -n "$MD_NS" logs "$pod" --all-containers --tail=300
		kubectl -n "$MD_NS" logs "$pod" --all-containers --previous --tail=100 2>/dev/null
	done
	[ -f "$WORK/port-forward.log" ] && cat "$WORK/port-forward.log"
	set -e
}

cleanup() {
	if [ -n "$PF_PID" ]; then kill "$PF_PID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}

trap 'dump "$LINENO"' ERR
trap cleanup EXIT

# until SECONDS_LEFT COMMAND...: retry COMMAND every 5 s until it succeeds or time runs out.
until_ok() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for: $*"
		sleep 5
	done
}

json() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# chat KEY STREAM OUT [MAX_TOKENS]: POST a chat completion through the gateway; prints the HTTP status.
chat() {
	curl -sS -o "$3" -D "$3.headers" -w '%{http_code}' --max-time 120 \
		-H "Authorization: Bearer $1" -H 'Content-Type: application/json' \
		-d "{\"model\": \"$SERVED\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": ${4:-8}, \"stream\": $2}" \
		"http://127.0.0.1:$PORT/v1/chat/completions" || true # curl writes 000 when it gets no answer
}

chat_ok() { [ "$(chat "$KEY" false "$WORK/reply.json")" = 200 ]; }
route_listed() { kubectl -n "$NS" get configmap rayleigh-gateway-routes -o jsonpath='{.data}' | grep -q "${MD_NS}_tiny.json"; }
route_gone() { ! route_listed; }
gateway_up() { curl -fsS --max-time 5 "http://127.0.0.1:$PORT/healthz" >/dev/null; }
children_gone() {
	[ -z "$(kubectl -n "$MD_NS" get deploy,rs,pods,svc,cm,pdb,networkpolicy,hpa -l "$SELECTOR" -o name)" ]
}
ready_replicas_are() { [ "$(kubectl -n "$MD_NS" get md tiny -o jsonpath='{.status.readyReplicas}')" = "$1" ]; }

log "kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
	kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER"
kubectl get nodes -o wide

if [ "${SKIP_BUILD:-}" != 1 ]; then
	log "build and load the images (operator and gateway: images/slim; replica: images/replica with the tiny model)"
	for extra in operator gateway; do
		docker build -q -f images/slim/Dockerfile --build-arg "EXTRA=$extra" -t "ghcr.io/rayleigh-llm/rayleigh-$extra:$TAG" .
	done
	docker build -q -f images/replica/Dockerfile -t "ghcr.io/rayleigh-llm/rayleigh-replica:$TAG" .
	for image in operator gateway replica; do
		kind load docker-image --name "$CLUSTER" "ghcr.io/rayleigh-llm/rayleigh-$image:$TAG"
	done
fi

log "API keys: one plain, one limited to 3 requests a minute (only their hashes enter the cluster)"
RAYLEIGH="${RAYLEIGH:-}"
if [ -z "$RAYLEIGH" ] && [ -x .venv/bin/rayleigh ]; then RAYLEIGH=.venv/bin/rayleigh; fi
if [ -z "$RAYLEIGH" ]; then
	python3 -m venv "$WORK/venv"
	"$WORK/venv/bin/pip" install -q -e ".[gateway]"
	RAYLEIGH="$WORK/venv/bin/rayleigh"
fi
PY="$(dirname "$RAYLEIGH")/python"
[ -x "$PY" ] || PY=python3
"$RAYLEIGH" keys create --file "$WORK/keys.yaml" --owner e2e --model "$SERVED" --json >"$WORK/key.json"
"$RAYLEIGH" keys create --file "$WORK/keys.yaml" --owner e2e-burst --model "$SERVED" --rpm 3 --json >"$WORK/burst.json"
KEY="$(json "$WORK/key.json" key)"
BURST_KEY="$(json "$WORK/burst.json" key)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic e2e-keys --from-file=keys.yaml="$WORK/keys.yaml" \
	--dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic e2e-test-key --from-literal=apiKey="$KEY" \
	--dry-run=client -o yaml | kubectl apply -f -

log "helm upgrade --install with $VALUES"
helm upgrade --install rayleigh charts/rayleigh --namespace "$NS" -f "$VALUES" --wait --timeout 5m
kubectl -n "$NS" get pods -o wide

log "apply $MODEL and wait for Ready"
kubectl -n "$MD_NS" apply -f "$MODEL"
kubectl -n "$MD_NS" wait --for=condition=Ready md/tiny --timeout=20m
kubectl -n "$MD_NS" get md tiny -o wide

log "the operator hands the route to the gateway"
until_ok 120 route_listed

log "port-forward the gateway to 127.0.0.1:$PORT"
kubectl -n "$NS" port-forward svc/rayleigh-gateway "$PORT:80" >"$WORK/port-forward.log" 2>&1 &
PF_PID=$!
until_ok 60 gateway_up

log "chat completion (the gateway reloads routes and keys when the kubelet refreshes its volumes: up to a minute)"
until_ok 300 chat_ok
cat "$WORK/reply.json"
echo
"$PY" - "$WORK/reply.json" <<'PY'
import json, sys

reply = json.load(open(sys.argv[1]))
assert reply["object"] == "chat.completion", reply
assert reply["usage"]["completion_tokens"] > 0, reply
assert reply["choices"][0]["message"]["role"] == "assistant", reply
PY

log "streamed chat completion (SSE)"
code="$(chat "$KEY" true "$WORK/stream.txt")"
[ "$code" = 200 ] || fail "streamed chat answered $code: $(cat "$WORK/stream.txt")"
grep -qi '^content-type: text/event-stream' "$WORK/stream.txt.headers" || fail "stream is not text/event-stream"
chunks="$(grep -c '^data: {' "$WORK/stream.txt" || true)"
[ "$chunks" -ge 1 ] || fail "no SSE chunk: $(cat "$WORK/stream.txt")"
grep -q '^data: \[DONE\]' "$WORK/stream.txt" || fail "stream did not end with data: [DONE]"
echo "$chunks chunks, then [DONE]"

log "a bad key gets 401 with an OpenAI-style error"
code="$(chat "rk-not-a-key" false "$WORK/bad.json")"
[ "$code" = 401 ] || fail "bad key answered $code: $(cat "$WORK/bad.json")"
"$PY" -c 'import json, sys; e = json.load(open(sys.argv[1]))["error"]; assert e["message"], e' "$WORK/bad.json"
cat "$WORK/bad.json"
echo

log "a burst on the key limited to 3 requests a minute gets 429 with Retry-After"
codes=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
	codes="$codes $(chat "$BURST_KEY" false "$WORK/burst-reply.json" 1)"
	case "$codes" in *429*) break ;; esac
done
echo "status codes:$codes"
case "$codes" in *429*) ;; *) fail "no 429 in a burst of 10 on a 3-per-minute key:$codes" ;; esac
grep -qi '^retry-after:' "$WORK/burst-reply.json.headers" || fail "429 without Retry-After"
cat "$WORK/burst-reply.json"
echo

log "scale to 2 replicas"
kubectl -n "$MD_NS" scale md/tiny --replicas=2
until_ok 900 ready_replicas_are 2
[ "$(kubectl -n "$MD_NS" get deploy tiny-workers -o jsonpath='{.spec.replicas}')" = 2 ] ||
	fail "worker Deployment not scaled to 2"
kubectl -n "$MD_NS" get md tiny -o wide
kubectl -n "$MD_NS" get pods -l "$SELECTOR" -o wide
until_ok 120 chat_ok

log "helm test"
helm test rayleigh --namespace "$NS" --logs --timeout 2m

log "delete md/tiny: every child goes with it"
kubectl -n "$MD_NS" delete md tiny --wait --timeout=2m
until_ok 300 children_gone
until_ok 120 route_gone
echo "children and route gone"

log "kind e2e passed"
