// Service invocation caller: a DaprClient (HTTP) calling the app named by TARGET_APP through
// its own sidecar with client.invoker.invoke, then exiting.
"use strict";

const { DaprClient, HttpMethod } = require("@dapr/dapr");
const { step, finish, crash, clientOptions } = require("./report");

async function main() {
  const target = process.env.TARGET_APP;
  const client = new DaprClient(clientOptions());
  await step("post", () =>
    client.invoker.invoke(target, "echo", HttpMethod.POST, { hello: "world", n: 42, list: [1, 2] }),
  );
  await step("get", () => client.invoker.invoke(target, "hello?name=trellis", HttpMethod.GET));
  // Express answers 404 for a route nobody listens on; the caller must see that status.
  await step("missing", () => client.invoker.invoke(target, "no-such-method", HttpMethod.GET));
  await step("unknown-app", () =>
    client.invoker.invoke("no-such-app", "echo", HttpMethod.POST, { x: 1 }),
  );
  finish();
}

main().catch(crash);
