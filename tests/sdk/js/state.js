// State management through the SDK's DaprClient (HTTP) against the default `statestore`:
// save, get, getBulk, delete, transaction, query, and ETag concurrency. Reports what each
// call returned; the test decides what is right.
"use strict";

const { DaprClient, StateConcurrencyEnum } = require("@dapr/dapr");
const { step, finish, crash, clientOptions } = require("./report");

const STORE = "statestore";
const FIRST_WRITE = { concurrency: StateConcurrencyEnum.CONCURRENCY_FIRST_WRITE };

async function main() {
  const client = new DaprClient(clientOptions());
  const state = client.state;

  await step("save", () =>
    state.save(STORE, [
      { key: "apple", value: { name: "apple", kind: "fruit", price: 3 } },
      { key: "carrot", value: { name: "carrot", kind: "vegetable", price: 1 } },
      { key: "note", value: "plain text" },
      { key: "banana", value: { name: "banana", kind: "fruit", price: 2 } },
    ]),
  );
  await step("get-object", () => state.get(STORE, "apple"));
  await step("get-string", () => state.get(STORE, "note"));
  await step("get-missing", () => state.get(STORE, "nothing-here"));
  await step("get-bulk", () => state.getBulk(STORE, ["apple", "carrot", "nothing-here"]));
  await step("query", () =>
    state.query(STORE, {
      filter: { EQ: { kind: "fruit" } },
      sort: [{ key: "name" }],
      page: { limit: 10 },
    }),
  );

  // ETags: the SDK's get() returns the value only; getBulk() carries the etag.
  const [first] = (await step("etag-read", () => state.getBulk(STORE, ["apple"]))) || [{}];
  const etag = first.etag;
  const update = (value) => [{ key: "apple", value, etag, options: FIRST_WRITE }];
  await step("save-current-etag", () => state.save(STORE, update({ name: "apple", v: 2 })));
  await step("save-stale-etag", () => state.save(STORE, update({ name: "apple", v: 3 })));
  await step("get-after-stale", () => state.get(STORE, "apple"));
  await step("delete-stale-etag", () => state.delete(STORE, "apple", { etag, ...FIRST_WRITE }));
  const [now] = (await step("etag-reread", () => state.getBulk(STORE, ["apple"]))) || [{}];
  await step("delete-current-etag", () =>
    state.delete(STORE, "apple", { etag: now.etag, ...FIRST_WRITE }),
  );
  await step("get-deleted-with-etag", () => state.get(STORE, "apple"));

  await step("delete", () => state.delete(STORE, "carrot"));
  await step("get-deleted", () => state.get(STORE, "carrot"));

  await step("transaction", () =>
    state.transaction(STORE, [
      { operation: "upsert", request: { key: "cherry", value: { name: "cherry", kind: "fruit" } } },
      { operation: "delete", request: { key: "banana" } },
    ]),
  );
  await step("after-transaction", () => state.getBulk(STORE, ["cherry", "banana"]));
  // One operation with a stale etag: none of the transaction may apply.
  await step("transaction-stale-etag", () =>
    state.transaction(STORE, [
      { operation: "upsert", request: { key: "date", value: { name: "date" } } },
      { operation: "upsert", request: { key: "cherry", value: { name: "x" }, etag: "999999", options: FIRST_WRITE } },
    ]),
  );
  await step("after-failed-transaction", () => state.getBulk(STORE, ["date", "cherry"]));
  finish();
}

main().catch(crash);
