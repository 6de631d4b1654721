// Service invocation callee: a DaprServer (HTTP) exposing `echo` (POST) and `hello` (GET)
// with server.invoker.listen, as an app written against Dapr would.
"use strict";

const { DaprServer, CommunicationProtocolEnum, HttpMethod } = require("@dapr/dapr");
const { report, crash } = require("./report");

async function main() {
  const server = new DaprServer({
    serverHost: "127.0.0.1",
    serverPort: process.env.APP_PORT,
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    clientOptions: { daprHost: "127.0.0.1", daprPort: process.env.DAPR_HTTP_PORT },
  });
  await server.invoker.listen(
    "echo",
    async (data) => {
      const body = JSON.parse(data.body);
      report("invoked", {
        method: "echo",
        body,
        contentType: data.metadata.contentType,
        caller: data.headers["dapr-caller-app-id"],
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
