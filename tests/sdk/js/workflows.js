// Dapr workflows with the SDK's WorkflowRuntime (the worker) and DaprWorkflowClient on the
// sidecar's gRPC port: chaining, fan-out, an external event racing a timer, a child
// workflow, continue-as-new, terminate, suspend/resume and purge. Reports what each call
// returned; crates/trellis/tests/it/sdk_js.rs decides what is right.
"use strict";

const { DaprWorkflowClient, WorkflowRuntime, WorkflowRuntimeStatus } = require("@dapr/dapr");
const { step, finish, crash } = require("./report");

const options = { daprHost: "127.0.0.1", daprPort: process.env.DAPR_GRPC_PORT };

const inc = async (_ctx, x) => x + 1;
const square = async (_ctx, x) => x * x;

const chain = async function* (ctx, x) {
  for (let i = 0; i < 5; i++) {
    x = yield ctx.callActivity(inc, x);
  }
  return x;
};

const fan = async function* (ctx, n) {
  const tasks = [];
  for (let i = 0; i < n; i++) tasks.push(ctx.callActivity(square, i));
  const results = yield ctx.whenAll(tasks);
  return results.reduce((a, b) => a + b, 0);
};

const approval = async function* (ctx, timeoutMs) {
  const approved = ctx.waitForExternalEvent("approve");
  const timer = ctx.createTimer(timeoutMs / 1000);
  const winner = yield ctx.whenAny([approved, timer]);
  if (winner === timer) return "timed out";
  return "approved by " + approved.getResult();
};

const parent = async function* (ctx, x) {
  const child = yield ctx.callChildWorkflow(chain, x, ctx.getWorkflowInstanceId() + "-child");
  return child * 2;
};

const counter = async function* (ctx, n) {
  if (n >= 3) return n;
  yield ctx.createTimer(0.05);
  ctx.continueAsNew(n + 1, false);
};

function outcome(state) {
  if (!state) return null;
  return { status: WorkflowRuntimeStatus[state.runtimeStatus], output: state.serializedOutput };
}

async function run(client, wf, input, id) {
  await client.scheduleNewWorkflow(wf, input, id);
  return outcome(await client.waitForWorkflowCompletion(id, true, 60));
}

async function main() {
  const runtime = new WorkflowRuntime(options)
    .registerWorkflow(chain)
    .registerWorkflow(fan)
    .registerWorkflow(approval)
    .registerWorkflow(parent)
    .registerWorkflow(counter)
    .registerActivity(inc)
    .registerActivity(square);
  await runtime.start();
  const client = new DaprWorkflowClient(options);

  await step("chain", () => run(client, chain, 10, "js-chain"));
  await step("fan-out", () => run(client, fan, 100, "js-fan"));
  await step("event-wins", async () => {
    await client.scheduleNewWorkflow(approval, 30000, "js-yes");
    await client.waitForWorkflowStart("js-yes", false, 30);
    await client.raiseEvent("js-yes", "approve", "ana");
    return outcome(await client.waitForWorkflowCompletion("js-yes", true, 30));
  });
  await step("timer-wins", () => run(client, approval, 500, "js-no"));
  await step("child", () => run(client, parent, 1, "js-parent"));
  await step("continue-as-new", () => run(client, counter, 0, "js-counter"));
  await step("terminate", async () => {
    await client.scheduleNewWorkflow(approval, 300000, "js-term");
    await client.waitForWorkflowStart("js-term", false, 30);
    await client.terminateWorkflow("js-term", "stopped");
    return outcome(await client.waitForWorkflowCompletion("js-term", true, 30));
  });
  await step("suspend-resume", async () => {
    await client.scheduleNewWorkflow(approval, 300000, "js-pause");
    await client.waitForWorkflowStart("js-pause", false, 30);
    await client.suspendWorkflow("js-pause");
    const paused = WorkflowRuntimeStatus[(await client.getWorkflowState("js-pause", false)).runtimeStatus];
    await client.raiseEvent("js-pause", "approve", "bo");
    await client.resumeWorkflow("js-pause");
    const done = outcome(await client.waitForWorkflowCompletion("js-pause", true, 30));
    return { paused, done };
  });
  await step("purge", async () => {
    const purged = await client.purgeWorkflow("js-chain");
    return { purged, after: outcome(await client.getWorkflowState("js-chain", true)) };
  });
  await client.stop();
  await runtime.stop();
  finish(0);
}

main().catch(crash);
