// An HTTP worker in Node.js (18+, its built-in fetch) for the task type `http.shout` of
// workflow.json: input {"greeting": "hello ada"} -> output {"shout": "HELLO ADA!"}. Its first
// attempt of each task fails retryably (to show a retry); the next one completes. While a task
// runs it heartbeats every `heartbeat_ms` (the task comes back to another worker if it stops).
//
//   DAGNATS_HTTP_URL=http://127.0.0.1:8080 node examples/http_worker/worker.mjs
//
// Set DAGNATS_API_TOKEN when the API needs a bearer token.
const base = process.env.DAGNATS_HTTP_URL ?? "http://127.0.0.1:8080";
const taskType = process.env.TASK_TYPE ?? "http.shout";
const headers = { "content-type": "application/json" };
if (process.env.DAGNATS_API_TOKEN) {
  headers.authorization = `Bearer ${process.env.DAGNATS_API_TOKEN}`;
}

async function post(path, body) {
  const response = await fetch(base + path, {
    method: "POST",
    headers,
    body: JSON.stringify(body ?? {}),
  });
  const answer = await response.json();
  if (!response.ok) {
    // A problem detail (RFC 9457): title, status, detail, hint.
    console.error(`worker.mjs: ${path}: ${answer.status} ${answer.title}: ${answer.detail}`);
  }
  return answer;
}

async function handle(task) {
  const beat = setInterval(() => {
    post(`/v1/tasks/${task.id}/heartbeat`).catch(() => {});
  }, task.heartbeat_ms);
  try {
    if (task.attempt === 1) {
      console.error(`worker.mjs: ${task.id} attempt 1: failing it (retryable)`);
      await post(`/v1/tasks/${task.id}/fail`, {
        error: "the first attempt fails in this example",
        retryable: true,
        retry_after_ms: 100,
      });
      return;
    }
    const shout = `${String(task.input?.greeting ?? "").toUpperCase()}!`;
    console.error(`worker.mjs: ${task.id} attempt ${task.attempt}: ${shout}`);
    await post(`/v1/tasks/${task.id}/complete`, { output: { shout } });
  } finally {
    clearInterval(beat);
  }
}

// Stopped, the tasks it holds come back to other workers after their heartbeat timeout.
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
console.error(`worker.mjs: serving ${taskType} from ${base}`);
for (;;) {
  let tasks = [];
  try {
    const reply = await post("/v1/tasks/poll", {
      task_types: [taskType], max_tasks: 4, timeout_ms: 20000, worker_id: "worker.mjs",
    });
    tasks = reply.tasks ?? [];
  } catch (error) {
    console.error(`worker.mjs: poll failed (${error.message}); again in 1 s`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    continue;
  }
  await Promise.all(tasks.map(handle));
}
