// Pub/sub subscriber: a DaprServer (HTTP; gRPC `AppCallback` when DAPR_PROTOCOL=grpc)
// subscribing to `pubsub` on up to three topics,
// each named by an environment variable so every test uses its own:
//   TOPIC_PLAIN  server.pubsub.subscribe, every message acknowledged (SUCCESS)
//   TOPIC_FLAKY  server.pubsub.subscribe, RETRY on a message's first delivery, SUCCESS after
//   TOPIC_BULK   server.pubsub.subscribeBulk (maxMessagesCount 10, maxAwaitDurationMs 1000)
// Every handler call is reported as `received`; every bulk request the sidecar sends is
// reported as `bulk-request` (seen by a middleware on the SDK's own Express app; HTTP only).
"use strict";

const express = require("express");
const { DaprServer, CommunicationProtocolEnum, DaprPubSubStatusEnum } = require("@dapr/dapr");
const { report, crash, serverOptions } = require("./report");

const PUBSUB = "pubsub";
const BULK_MAX_MESSAGES = 10;

async function main() {
  if (process.env.DAPR_PROTOCOL === "grpc") {
    return subscribe(new DaprServer(serverOptions()));
  }
  const app = express();
  const server = new DaprServer({
    serverHost: "127.0.0.1",
    serverPort: process.env.APP_PORT,
    serverHttp: app,
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    clientOptions: { daprHost: "127.0.0.1", daprPort: process.env.DAPR_HTTP_PORT },
  });
  // Registered after the SDK's body parsers and before its subscription routes, so it sees
  // the parsed envelope of every delivery before the SDK handles it.
  app.use((req, _res, next) => {
    if (req.method === "POST" && req.body && req.body.type === "com.dapr.event.sent.bulk") {
      const entries = req.body.entries || [];
      report("bulk-request", {
        path: req.path,
        topic: req.body.topic,
        entries: entries.length,
        contentTypes: [...new Set(entries.map((e) => e.contentType))],
      });
    }
    next();
  });
  return subscribe(server);
}

async function subscribe(server) {
  const { TOPIC_PLAIN, TOPIC_FLAKY, TOPIC_BULK } = process.env;
  if (TOPIC_PLAIN) {
    await server.pubsub.subscribe(PUBSUB, TOPIC_PLAIN, async (data, headers) => {
      report("received", { topic: TOPIC_PLAIN, data, contentType: headers["content-type"] });
      return DaprPubSubStatusEnum.SUCCESS;
    });
  }
  if (TOPIC_FLAKY) {
    const attempts = new Map();
    await server.pubsub.subscribe(PUBSUB, TOPIC_FLAKY, async (data) => {
      const key = JSON.stringify(data);
      const attempt = (attempts.get(key) || 0) + 1;
      attempts.set(key, attempt);
      report("received", { topic: TOPIC_FLAKY, data, attempt });
      return attempt === 1 ? DaprPubSubStatusEnum.RETRY : DaprPubSubStatusEnum.SUCCESS;
    });
  }
  if (TOPIC_BULK) {
    await server.pubsub.subscribeBulk(
      PUBSUB,
      TOPIC_BULK,
      async (data) => {
        report("received", { topic: TOPIC_BULK, data });
        return DaprPubSubStatusEnum.SUCCESS;
      },
      { maxMessagesCount: BULK_MAX_MESSAGES, maxAwaitDurationMs: 1000 },
    );
  }
  await server.start();
  report("started");
}

main().catch(crash);
