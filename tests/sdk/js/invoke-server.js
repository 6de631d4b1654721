// Service invocation callee: a DaprServer (HTTP) exposing `echo` (POST) and `hello` (GET)
// with server.invoker.listen, as an app written against Dapr would.
"use strict";

const { DaprServer, HttpMethod } = require("@dapr/dapr");
const { report, crash, serverOptions } = require("./report");

async function main() {
  const server = new DaprServer(serverOptions());
  await server.invoker.listen(
    "echo",
    async (data) => {
      // Over HTTP the body is the JSON text; over gRPC the SDK has parsed it already.
      const body = typeof data.body === "string" ? JSON.parse(data.body) : data.body;
      report("invoked", {
        method: "echo",
        body,
        contentType: data.metadata && data.metadata.contentType,
        caller: data.headers && data.headers["dapr-caller-app-id"],
      });
      return { echoed: body, by: process.env.APP_ID };
    },
    { method: HttpMethod.POST },
  );
  await server.invoker.listen("hello", async (data) => ({ greeting: "hello", url: data.query }), {
    method: HttpMethod.GET,
  });
  // start() listens, then waits for the sidecar through the SDK's own readiness probe.
  await server.start();
  report("started");
}

main().catch(crash);
