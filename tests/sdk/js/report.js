// Shared by the test apps: how an app tells crates/trellis/tests/it/sdk_js.rs what it saw.
//
// Each observation is one JSON line appended to the file named by SDK_REPORT. A file rather
// than stdout, so the test depends neither on the launcher's `== APP - id ==` prefixing nor
// on stdout being flushed before the process exits; appendFileSync writes each line in one
// O_APPEND write, so apps sharing the file do not interleave.
"use strict";

const fs = require("fs");
const { CommunicationProtocolEnum } = require("@dapr/dapr");

const REPORT = process.env.SDK_REPORT;
if (!REPORT) {
  throw new Error("SDK_REPORT is not set: run this app from crates/trellis/tests/it/sdk_js.rs");
}

function report(event, fields = {}) {
  // An Error serialises as `{}`; the replacer keeps what the sidecar answered instead (the
  // SDK returns Errors inside results too, e.g. publishBulk's failedMessages[].error).
  const line = JSON.stringify({ app: process.env.APP_ID, event, ...fields }, (_key, value) =>
    value instanceof Error ? describeError(value) : value,
  );
  fs.appendFileSync(REPORT, line + "\n");
}

// The SDK's gRPC client throws a ConnectError with the status code and message. Its HTTP
// client throws `Error(JSON.stringify({error, error_msg, status}))` for a
// non-2xx answer (and save/delete/publish return `{error}` with that Error instead of
// throwing): turn either into `{status, body}` so the test sees the sidecar's answer.
function describeError(e) {
  // In gRPC mode the SDK throws Connect errors: the gRPC code (a number) and the message.
  if (e && e.name === "ConnectError") {
    return { grpcCode: e.code, message: e.rawMessage };
  }
  try {
    const parsed = JSON.parse(e.message);
    return { status: parsed.status, body: parsed.error_msg };
  } catch (_) {
    return { message: String((e && e.stack) || e) };
  }
}

// Runs one step and reports what it returned or threw, so one failing call does not hide the
// results of the next ones.
async function step(name, fn) {
  try {
    const result = await fn();
    report("step", { step: name, result: result === undefined ? null : result });
    return result;
  } catch (e) {
    report("step", { step: name, error: describeError(e) });
    return undefined;
  }
}

// Ends a client app: reports `done` (the test waits for it) and exits, since the SDK's
// keep-alive agent would otherwise keep the process alive.
function finish(code = 0) {
  report("done", { code });
  process.exit(code);
}

function crash(e) {
  report("crashed", { error: describeError(e) });
  process.exit(1);
}

// How a client app reaches its sidecar: HTTP unless DAPR_PROTOCOL=grpc, so one app runs the
// same calls over either of the sidecar's APIs.
function clientOptions() {
  const grpc = process.env.DAPR_PROTOCOL === "grpc";
  return {
    daprHost: "127.0.0.1",
    daprPort: grpc ? process.env.DAPR_GRPC_PORT : process.env.DAPR_HTTP_PORT,
    communicationProtocol: grpc ? CommunicationProtocolEnum.GRPC : CommunicationProtocolEnum.HTTP,
  };
}

// How a DaprServer app serves its sidecar: HTTP, or gRPC (`AppCallback`) when
// DAPR_PROTOCOL=grpc.
function serverOptions() {
  const grpc = process.env.DAPR_PROTOCOL === "grpc";
  return {
    serverHost: "127.0.0.1",
    serverPort: process.env.APP_PORT,
    communicationProtocol: grpc ? CommunicationProtocolEnum.GRPC : CommunicationProtocolEnum.HTTP,
    clientOptions: clientOptions(),
  };
}

module.exports = { report, step, describeError, finish, crash, clientOptions, serverOptions };
