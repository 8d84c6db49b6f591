#!/usr/bin/env bash
# An HTTP worker in shell (bash, curl, grep, cut) for the task type `http.greet` of
# workflow.json: input {"name": "ada"} -> output {"greeting": "hello ada"}. Its first attempt
# of each task fails retryably (to show a retry); the next one completes.
#
#   DAGNATS_HTTP_URL=http://127.0.0.1:8080 bash examples/http_worker/worker.sh
#
# The JSON is read with grep -o: good for this example's flat fields (the poll answer lists
# `id` and `attempt` before `input`), not a JSON parser. Set DAGNATS_API_TOKEN when the API
# needs a bearer token.
set -u
base=${DAGNATS_HTTP_URL:-http://127.0.0.1:8080}
task_type=${TASK_TYPE:-http.greet}
auth=()
if [ -n "${DAGNATS_API_TOKEN:-}" ]; then
  auth=(-H "Authorization: Bearer ${DAGNATS_API_TOKEN}")
fi

post() {  # post PATH BODY: print the answer's body
  curl -sS --max-time 70 -X POST "${auth[@]}" -H 'Content-Type: application/json' \
    --data "$2" "${base}$1"
}

first_string() {  # first_string FIELD JSON: the first "FIELD":"..." value
  grep -o "\"$1\":\"[^\"]*\"" <<<"$2" | head -n 1 | cut -d '"' -f 4
}

first_number() {  # first_number FIELD JSON: the first "FIELD":<digits> value
  grep -o "\"$1\":[0-9]*" <<<"$2" | head -n 1 | cut -d ':' -f 2
}

trap 'exit 0' TERM INT
echo "worker.sh: serving ${task_type} from ${base}" >&2
while true; do
  poll="{\"task_types\":[\"${task_type}\"],\"max_tasks\":1,\"timeout_ms\":20000,\"worker_id\":\"worker.sh\"}"
  if ! reply=$(post /v1/tasks/poll "$poll"); then
    sleep 1  # the server is not there (yet): try again
    continue
  fi
  id=$(first_string id "$reply")
  [ -n "$id" ] || continue  # the long poll ended without a task
  attempt=$(first_number attempt "$reply")
  name=$(first_string name "$reply")
  if [ "$attempt" = "1" ]; then
    echo "worker.sh: ${id} attempt 1: failing it (retryable)" >&2
    post "/v1/tasks/${id}/fail" \
      '{"error":"the first attempt fails in this example","retryable":true,"retry_after_ms":100}' >/dev/null
  else
    echo "worker.sh: ${id} attempt ${attempt}: hello ${name}" >&2
    post "/v1/tasks/${id}/complete" "{\"output\":{\"greeting\":\"hello ${name}\"}}" >/dev/null
  fi
done
