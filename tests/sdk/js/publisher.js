// Pub/sub publisher: a DaprClient (HTTP) publishing to TOPIC on `pubsub`, then exiting.
// MODES (default "publish,bulk") says how: `publish` sends COUNT messages one by one with
// client.pubsub.publish, `bulk` sends COUNT in one client.pubsub.publishBulk call; each
// mode adds one plain-text message. Message data: objects `{id: "single-<i>" | "bulk-<i>",
// n}` and the strings "text-single", "text-bulk".
"use strict";

const { DaprClient } = require("@dapr/dapr");
const { step, finish, crash, clientOptions } = require("./report");

const PUBSUB = "pubsub";

async function main() {
  const topic = process.env.TOPIC;
  const count = Number(process.env.COUNT || "10");
  const client = new DaprClient(clientOptions());
  const modes = (process.env.MODES || "publish,bulk").split(",");
  if (modes.includes("publish")) {
    for (let i = 0; i < count; i++) {
      await step(`publish-${i}`, () =>
        client.pubsub.publish(PUBSUB, topic, { id: `single-${i}`, n: i }),
      );
    }
    await step("publish-text", () => client.pubsub.publish(PUBSUB, topic, "text-single"));
  }
  if (modes.includes("bulk")) {
    const batch = [];
    for (let i = 0; i < count; i++) {
      batch.push({ id: `bulk-${i}`, n: i });
    }
    batch.push("text-bulk");
    await step("publish-bulk", () => client.pubsub.publishBulk(PUBSUB, topic, batch));
  }
  finish();
}

main().catch(crash);
