// Metadata and health through the SDK's DaprClient (HTTP): health.isHealthy(),
// metadata.get(), and metadata.set() read back through metadata.get(); then exits.
"use strict";

const { DaprClient } = require("@dapr/dapr");
const { step, finish, crash, clientOptions } = require("./report");

async function main() {
  const client = new DaprClient(clientOptions());
  await step("healthy", () => client.health.isHealthy());
  await step("metadata", () => client.metadata.get());
  await step("set", () => client.metadata.set("sdkCheck", "set-by-js"));
  await step("metadata-after-set", () => client.metadata.get());
  finish();
}

main().catch(crash);
